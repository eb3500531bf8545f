"""The instructions `models check` measures agreement on: the OpenVINO notebook's examples plus
our own, in the categories of Dolly's training set (databricks-dolly-15k): open QA,
brainstorming, classification, closed QA, summarization and information extraction (the last
three with a passage, in Dolly's `Input:` format), and creative writing, which the notebook's
examples include. The passages are our own short texts. A file of one's own can replace them
(`read_prompt_file`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dolly_desktop.errors import DollyError
from dolly_desktop.generation.examples import CONTEXT_EXAMPLES, EXAMPLES
from dolly_desktop.generation.prompt import build_prompt, read_text_file

OPEN_QA = "open QA"
BRAINSTORMING = "brainstorming"
CLASSIFICATION = "classification"
CLOSED_QA = "closed QA"
SUMMARIZATION = "summarization"
EXTRACTION = "extraction"
CREATIVE = "creative writing"
OWN = "own"  # a prompts file's lines without a category
MAX_PROMPTS = 1000
MAX_FILE_CHARS = 2_000_000


@dataclass(frozen=True)
class CheckPrompt:
    category: str
    instruction: str
    context: str = ""


_NOTEBOOK_CATEGORY = {
    "Give me recipe for pizza with pineapple": OPEN_QA,
    "Write me a tweet about new OpenVINO release": CREATIVE,
    "Explain difference between CPU and GPU": OPEN_QA,
    "Give five ideas for great weekend with family": BRAINSTORMING,
    "Do Androids dream of Electric sheep?": OPEN_QA,
    "Who is Dolly?": OPEN_QA,
    "Please give me advice how to write resume?": OPEN_QA,
    "Name 3 advantages to be a cat": BRAINSTORMING,
    "Write instructions on how to become a good AI engineer": OPEN_QA,
    "Write a love letter to my best friend": CREATIVE,
}
_CONTEXT_CATEGORIES = (CLOSED_QA, SUMMARIZATION, EXTRACTION)  # CONTEXT_EXAMPLES, in order

_LIGHTHOUSE = (
    "The Bell Rock Lighthouse, off the coast of Angus in Scotland, was built between 1807 and "
    "1810 by Robert Stevenson on a reef that is covered by the sea at high tide. Its tower is "
    "35 metres tall and was lit for the first time on 1 February 1811. Stonemasons could work "
    "on the rock for only a few hours at each low tide, and lived on a ship anchored nearby."
)
_COFFEE = (
    "Arabica and robusta are the two coffee species grown most widely. Arabica grows best at "
    "high altitudes, has a sweeter and more acidic taste, and makes up about 60 percent of the "
    "world's production. Robusta is hardier, grows at lower altitudes, contains nearly twice as "
    "much caffeine and tastes more bitter; it is often used in espresso blends and instant "
    "coffee."
)
_MEETING = (
    "Minutes of the garden club, 4 March. Present: Ana Ruiz (chair), Tom Becker, Li Wei and "
    "Sara Okafor. The club will hold its plant sale on 12 April at the community hall. Tom "
    "will order 200 seed trays by 20 March, with a budget of 150 euros. Li Wei proposed a "
    "composting workshop for May; the vote was three in favour and one against. The next "
    "meeting is on 1 April at 7 pm."
)
_VOLCANO = (
    "Mount Tambora, on the island of Sumbawa in Indonesia, erupted in April 1815 in the largest "
    "eruption in recorded history. Ash and gas thrown into the upper atmosphere lowered "
    "temperatures around the world, and 1816 became known in Europe and North America as the "
    "Year Without a Summer: crops failed, food prices rose and famine followed in several "
    "countries. The mountain lost about a third of its height."
)
_LIBRARY = (
    "From Monday the city library opens at 9 am instead of 10 am on weekdays and closes at 8 "
    "pm. On Saturdays it keeps its hours of 10 am to 5 pm, and it stays closed on Sundays. "
    "Members may now borrow up to 15 items at once, up from 10, and e-books can be renewed "
    "twice. The reading room on the second floor is closed for repairs until the end of June."
)
_BIKE = (
    "Order 58213 was placed on 2 May by Jonas Weber, Lindenstrasse 14, 10969 Berlin, phone "
    "030 5550 1234. It contains one city bike, model Urban 7 in dark green, size M, for 649 "
    "euros, a rear rack for 39 euros and two inner tubes at 6.50 euros each. Delivery is "
    "planned for 9 May between 8 am and noon."
)

_OWN: tuple[CheckPrompt, ...] = (
    # open QA
    CheckPrompt(OPEN_QA, "Why is the sky blue?"),
    CheckPrompt(OPEN_QA, "What is the difference between weather and climate?"),
    CheckPrompt(OPEN_QA, "How does a refrigerator keep food cold?"),
    CheckPrompt(OPEN_QA, "What should I look for when buying a used car?"),
    # brainstorming
    CheckPrompt(BRAINSTORMING, "Give me ten names for a bakery that sells only bread."),
    CheckPrompt(BRAINSTORMING, "What are some ways to reduce food waste at home?"),
    CheckPrompt(BRAINSTORMING, "Suggest five indoor activities for a rainy afternoon with kids."),
    CheckPrompt(BRAINSTORMING, "List some ideas for a science fair project about water."),
    CheckPrompt(BRAINSTORMING, "What could I cook with eggs, spinach and cheese?"),
    CheckPrompt(BRAINSTORMING, "Brainstorm themes for a company summer party."),
    # classification
    CheckPrompt(
        CLASSIFICATION,
        "Classify each of these as a fruit or a vegetable: apple, carrot, banana, broccoli, "
        "cherry, onion.",
    ),
    CheckPrompt(
        CLASSIFICATION, "Which of these animals are mammals: dolphin, shark, bat, penguin, whale?"
    ),
    CheckPrompt(
        CLASSIFICATION,
        "Is the sentiment of this review positive or negative: 'The battery died after two "
        "days and support never answered.'",
    ),
    CheckPrompt(
        CLASSIFICATION,
        "Sort these into string instruments and wind instruments: violin, flute, cello, "
        "clarinet, harp, oboe.",
    ),
    CheckPrompt(
        CLASSIFICATION, "Which of these are programming languages: Python, Excel, Rust, HTML, Go?"
    ),
    CheckPrompt(
        CLASSIFICATION,
        "Tell me whether each of these is a country or a city: Peru, Oslo, Kenya, Lima, "
        "Canberra, Chile.",
    ),
    CheckPrompt(
        CLASSIFICATION,
        "Label this email as spam or not spam: 'Congratulations, you have won a free cruise! "
        "Click here to claim your prize today.'",
    ),
    CheckPrompt(
        CLASSIFICATION,
        "Classify these sports as team sports or individual sports: tennis, football, golf, "
        "volleyball, boxing, hockey.",
    ),
    # closed QA, with a passage
    CheckPrompt(
        CLOSED_QA, "Who built the Bell Rock Lighthouse, and when was it first lit?", _LIGHTHOUSE
    ),
    CheckPrompt(CLOSED_QA, "Which coffee species has more caffeine?", _COFFEE),
    CheckPrompt(CLOSED_QA, "When is the plant sale, and who orders the seed trays?", _MEETING),
    CheckPrompt(CLOSED_QA, "Why was 1816 called the Year Without a Summer?", _VOLCANO),
    CheckPrompt(CLOSED_QA, "Is the library open on Sundays?", _LIBRARY),
    # summarization, with a passage
    CheckPrompt(SUMMARIZATION, "Summarize this passage in one sentence.", _LIGHTHOUSE),
    CheckPrompt(SUMMARIZATION, "Summarize the differences between the two species.", _COFFEE),
    CheckPrompt(SUMMARIZATION, "Write a short summary of these minutes.", _MEETING),
    CheckPrompt(SUMMARIZATION, "Summarize what happened after the eruption.", _VOLCANO),
    CheckPrompt(SUMMARIZATION, "Summarize the changes for library members.", _LIBRARY),
    # information extraction, with a passage
    CheckPrompt(EXTRACTION, "List every year mentioned in the passage.", _LIGHTHOUSE),
    CheckPrompt(EXTRACTION, "Extract the names of the people present at the meeting.", _MEETING),
    CheckPrompt(EXTRACTION, "Extract the customer's name, address and phone number.", _BIKE),
    CheckPrompt(EXTRACTION, "List the items ordered with their prices.", _BIKE),
    CheckPrompt(EXTRACTION, "Extract the opening hours for each day of the week.", _LIBRARY),
    CheckPrompt(EXTRACTION, "Which countries and islands are named in the passage?", _VOLCANO),
    # creative writing
    CheckPrompt(CREATIVE, "Write a haiku about the first snow of winter."),
    CheckPrompt(CREATIVE, "Write a short thank-you note to a neighbour who watered my plants."),
    CheckPrompt(CREATIVE, "Write the opening sentence of a mystery novel set on a train."),
)

BUILT_IN: tuple[CheckPrompt, ...] = (
    tuple(CheckPrompt(_NOTEBOOK_CATEGORY[text], text) for text in EXAMPLES)
    + tuple(
        CheckPrompt(cat, instruction, passage)
        for cat, (instruction, passage) in zip(_CONTEXT_CATEGORIES, CONTEXT_EXAMPLES, strict=True)
    )
    + _OWN
)


def read_prompt_file(path: str | Path) -> list[CheckPrompt]:
    """Prompts of one's own from a UTF-8 file: one instruction per line (blank lines and lines
    starting with # skipped), or JSON lines with "instruction" and optionally "context" and
    "category". One sentence when the file cannot serve."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise DollyError(f"{p} is a folder: give a text file of instructions, one per line.")
    text = read_text_file(p, limit=MAX_FILE_CHARS)
    prompts = []
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("{"):
            prompts.append(_json_prompt(p.name, n, line))
        else:
            prompts.append(CheckPrompt(OWN, line))
        build_prompt(prompts[-1].instruction, prompts[-1].context)  # too long: refused now
    if not prompts:
        raise DollyError(f"{p.name} holds no instructions: write one per line.")
    if len(prompts) > MAX_PROMPTS:
        raise DollyError(f"{p.name} holds {len(prompts)} instructions; the limit is {MAX_PROMPTS}.")
    return prompts


def _json_prompt(name: str, n: int, line: str) -> CheckPrompt:
    try:
        obj = json.loads(line)
    except ValueError:
        raise DollyError(f"{name}, line {n}: not valid JSON.") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("instruction"), str):
        raise DollyError(f'{name}, line {n}: a JSON line needs an "instruction" string.')
    context, category = obj.get("context", ""), obj.get("category", OWN)
    if not isinstance(context, str) or not isinstance(category, str):
        raise DollyError(f'{name}, line {n}: "context" and "category" must be strings.')
    return CheckPrompt(category.strip() or OWN, obj["instruction"], context)
