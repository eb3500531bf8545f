"""The OpenVINO notebook's example instructions, one click away in the window."""

EXAMPLES: tuple[str, ...] = (
    "Give me recipe for pizza with pineapple",
    "Write me a tweet about new OpenVINO release",
    "Explain difference between CPU and GPU",
    "Give five ideas for great weekend with family",
    "Do Androids dream of Electric sheep?",
    "Who is Dolly?",
    "Please give me advice how to write resume?",
    "Name 3 advantages to be a cat",
    "Write instructions on how to become a good AI engineer",
    "Write a love letter to my best friend",
)

# Tasks with a passage, in the shapes Dolly's training set has them (closed QA, summarization,
# information extraction). The passages are our own short texts.
CONTEXT_EXAMPLES: tuple[tuple[str, str], ...] = (
    (
        "When did the Stockton and Darlington Railway open, and what did it first carry?",
        "The Stockton and Darlington Railway in the north-east of England opened on "
        "27 September 1825. It was the first public railway to use steam locomotives, and its "
        "first trains carried coal from the mines near Shildon, along with passengers riding "
        "in open wagons. George Stephenson was its engineer.",
    ),
    (
        "Summarize this passage in two sentences.",
        "Sourdough bread is leavened by a culture of wild yeast and lactic acid bacteria "
        "instead of baker's yeast. The culture, called a starter, is kept alive by regular "
        "feedings of flour and water. Because the bacteria produce acids while the dough "
        "rises slowly, the bread has a tangy flavour and keeps fresh for longer than most "
        "yeasted loaves. Bakers often spend years refining their starters.",
    ),
    (
        "Extract every city named in the passage as a comma-separated list.",
        "The tour began in Lisbon, crossed into Spain for two nights in Seville and three in "
        "Madrid, then flew to Lyon before ending with a week in Geneva, where the band had "
        "recorded its first album.",
    ),
)
