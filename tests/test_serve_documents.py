"""`serve` answering from document collections: `"documents": NAME` on both endpoints, through
the official `openai` client's extra_body, against a real server on the tiny model, with the
chunks used returned in `sources` (issue 24)."""

from __future__ import annotations

import concurrent.futures
import sqlite3
import time
from pathlib import Path

import httpx
import openai
import pytest
from conftest import TOKENIZER_DIR
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serving import post_json, serve_process
from test_documents import write_corpus

from dolly_desktop.documents.chunk import TokenCounter
from dolly_desktop.documents.index import DocIndex, default_path
from dolly_desktop.generation.prompt import build_prompt

QUESTION = "How often is the impeller replaced?"
GREEDY = {"temperature": 0, "max_tokens": 8}


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """An app home of the module's own with one indexed collection, `manuals`; serve reads it
    from the environment it inherits."""
    home = tmp_path_factory.mktemp("serve-docs-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DOLLY_DESKTOP_HOME", str(home))
        root = home.parent / "docs"
        write_corpus(root)
        with DocIndex() as ix:
            ix.add("manuals", [root])
            assert ix.index("manuals", TokenCounter(TOKENIZER_DIR / "tokenizer.json")).added == 4
        yield home


@pytest.fixture(scope="module")
def server(home, tiny_models):
    """serve (batching, the default) on the tiny model, over `home`'s collections."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DOLLY_DESKTOP_HOME", str(home))
        with serve_process(tiny_models["INT4"]) as served:
            yield served


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=60)


def passage_of(sources: list[dict]) -> str:
    return "\n\n".join(s["text"] for s in sources)


def test_completion_answers_from_the_chunks_it_returns(client):
    r = client.completions.create(
        model="x", prompt=QUESTION, extra_body={"documents": "manuals"}, **GREEDY
    )
    sources = r.model_extra["sources"]
    assert sources[0]["rel"] == "manual.pdf" and sources[0]["page"] == 2
    assert "impeller" in sources[0]["text"] and sources[0]["anchor"] == "manual.pdf, page 2"
    assert sources[0]["collection"] == "manuals" and "file" not in sources[0]  # no server path
    # The prompt was exactly the instruction and those chunks: the same answer and token count
    # as the chunks sent as the passage.
    same = client.completions.create(
        model="x", prompt=QUESTION, extra_body={"context": passage_of(sources)}, **GREEDY
    )
    assert r.usage.prompt_tokens == same.usage.prompt_tokens
    assert r.choices[0].text == same.choices[0].text
    assert "sources" not in (same.model_extra or {})  # only when documents were asked for
    plain = client.completions.create(model="x", prompt=QUESTION, **GREEDY)
    assert plain.usage.prompt_tokens < r.usage.prompt_tokens


def test_chat_takes_a_list_and_streams_sources_in_the_finish_chunk(client):
    body = {"documents": ["manuals", "manuals"]}  # each name once
    whole = client.chat.completions.create(
        model="x", messages=[{"role": "user", "content": QUESTION}], extra_body=body, **GREEDY
    )
    sources = whole.model_extra["sources"]
    assert sources and sources[0]["rel"] == "manual.pdf"
    stream = client.chat.completions.create(
        model="x",
        messages=[{"role": "user", "content": QUESTION}],
        extra_body=body,
        stream=True,
        stream_options={"include_usage": True},
        **GREEDY,
    )
    chunks = list(stream)
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].model_extra["sources"] == sources
    assert all("sources" not in (c.model_extra or {}) for c in chunks if c is not finish[0])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_completion_stream_carries_sources(client):
    stream = client.completions.create(
        model="x", prompt=QUESTION, extra_body={"documents": "manuals"}, stream=True, **GREEDY
    )
    finish = [c for c in stream if c.choices[0].finish_reason]
    assert finish[0].model_extra["sources"][0]["rel"] == "manual.pdf"


def error_of(server, body: dict, path: str = "/completions") -> dict:
    r = post_json(f"{server.url}{path}", body)
    assert r.status_code == 400, (body, r.status_code, r.text[:300])
    return r.json()["error"]


def test_unknown_collection_is_400_naming_it_and_the_known_ones(client, home):
    before = default_path_in(home).stat()
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="x", prompt=QUESTION, extra_body={"documents": "nope"})
    err = e.value.body
    assert err["param"] == "documents" and err["code"] == "collection_not_found"
    assert "'nope'" in err["message"] and "manuals" in err["message"]
    after = default_path_in(home).stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def default_path_in(home: Path) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DOLLY_DESKTOP_HOME", str(home))
        return default_path()


def test_no_index_at_all_is_400_and_none_is_made(server, home):
    db = default_path_in(home)
    aside = db.with_name("aside.sqlite3")
    db.rename(aside)
    try:
        err = error_of(server, {"prompt": QUESTION, "documents": "manuals"})
        assert err["code"] == "collection_not_found" and "no document collections" in err["message"]
        assert not db.exists()  # a request never creates the index
    finally:
        aside.rename(db)


def test_nothing_matching_is_400_unless_fallback_is_asked(server, client):
    body = {"prompt": "zzqqx vvbbn", "documents": "manuals", "max_tokens": 4}
    err = error_of(server, body)
    assert err["code"] == "no_matching_documents" and "documents_fallback" in err["message"]
    r = client.completions.create(
        model="x",
        prompt="zzqqx vvbbn",
        max_tokens=4,
        extra_body={"documents": "manuals", "documents_fallback": True},
    )
    assert r.model_extra["sources"] == [] and r.choices[0].text is not None


def test_the_passage_always_leaves_room_for_max_tokens(server, client):
    """The tiny model reads 2048 tokens: an instruction that leaves room for max_tokens 1000
    and hardly more gets no chunk (400); with a little more room, chunks, within the budget."""
    count = TokenCounter(TOKENIZER_DIR / "tokenizer.json")
    words = 1
    while count.count(build_prompt(QUESTION + " pump" * words)) < 2048 - 1000 - 2:
        words += 1
    long = QUESTION + " pump" * words  # 2 tokens spare, fewer than any chunk takes
    err = error_of(server, {"prompt": long, "documents": "manuals", "max_tokens": 1000})
    assert "fits beside" in err["message"] and err["code"] == "no_matching_documents"
    for spare in (40, 120):
        r = client.completions.create(
            model="x", prompt=long, max_tokens=1000 - spare, extra_body={"documents": "manuals"}
        )
        assert r.model_extra["sources"] and r.usage.prompt_tokens + 1000 - spare <= 2048


HOSTILE = [
    ({"documents": "x" * 100_000}, "documents must be"),
    ({"documents": ["manuals"] * 1000}, "documents must be"),
    ({"documents": 42}, "documents must be"),
    ({"documents": {"name": "manuals"}}, "documents must be"),
    ({"documents": [1]}, "documents must be"),
    ({"documents": ""}, "documents must be"),
    ({"documents": []}, "documents must be"),
    ({"documents": [None]}, "documents must be"),
    ({"documents": "manuals", "documents_fallback": "yes"}, "documents_fallback must be"),
    ({"documents": "manuals", "context": "a passage"}, "not both"),
    ({"documents": "man*"}, "no collection 'man*'"),
    ({"documents": 'manuals" OR 1=1 --'}, "no collection"),
]


@pytest.mark.parametrize(("extra", "says"), HOSTILE)
def test_hostile_documents_field_is_one_clear_400(server, extra, says):
    err = error_of(server, {"prompt": QUESTION, **extra})
    assert says in err["message"] and err["param"].startswith("documents"), err


@pytest.mark.parametrize(
    "question",
    ['"', "NEAR(impeller spring", "impeller OR", "impel*", "a AND NOT b ^ : -- ; ' ( )"],
)
def test_fts_syntax_in_the_instruction_is_only_words(server, question):
    body = {"prompt": question, "documents": "manuals", "documents_fallback": True, **GREEDY}
    r = post_json(f"{server.url}/completions", body)
    assert r.status_code == 200, r.text


def test_a_100k_instruction_is_refused_before_any_search(server):
    err = error_of(server, {"prompt": "impeller " * 11_112, "documents": "manuals"})
    assert err["param"] == "prompt" and "characters" in err["message"]


def test_a_whole_dolly_prompt_with_documents_is_refused(server):
    err = error_of(server, {"prompt": build_prompt(QUESTION), "documents": "manuals"})
    assert "instruction alone" in err["message"]


def test_retrieval_runs_off_the_event_loop(server, home):
    """With the index locked (as another process may hold it), a documents request waits for
    it on a worker thread; /v1/models answers meanwhile, and so does a plain request. Then it
    answers from the same index (a lock is not damage: the file is not set aside)."""
    lock = sqlite3.connect(default_path_in(home), isolation_level=None)
    lock.execute("PRAGMA locking_mode=EXCLUSIVE")
    lock.execute("BEGIN EXCLUSIVE")
    body = {"prompt": QUESTION, "documents": "manuals", **GREEDY}
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(post_json, f"{server.url}/completions", body)
            time.sleep(0.5)  # it reaches the lock
            r = httpx.get(f"{server.url}/models", timeout=5)
            assert r.status_code == 200
            plain = post_json(f"{server.url}/completions", {"prompt": "Hi", **GREEDY}, timeout=5)
            assert plain.status_code == 200
            assert not waiting.done()  # still held by the lock: it did not block the others
            lock.close()
            assert waiting.result().status_code == 200, waiting.result().text
            assert not list(default_path_in(home).parent.glob("*.damaged-*"))
    finally:
        lock.close()


def test_an_index_locked_past_its_timeout_is_503_and_stays_in_place(server, home):
    """DocIndex takes a lock held past its 10 s busy timeout for damage and sets the file
    aside: a request must not, so the server looks first (read-only) and answers 503."""
    lock = sqlite3.connect(default_path_in(home), isolation_level=None)
    lock.execute("PRAGMA locking_mode=EXCLUSIVE")
    lock.execute("BEGIN EXCLUSIVE")
    try:
        body = {"prompt": QUESTION, "documents": "manuals", **GREEDY}
        r = post_json(f"{server.url}/completions", body)
        assert r.status_code == 503 and r.json()["error"]["param"] == "documents", r.text
    finally:
        lock.close()
    assert not list(default_path_in(home).parent.glob("*.damaged-*"))
    r = post_json(f"{server.url}/completions", body)
    assert r.status_code == 200 and r.json()["sources"], r.text


DOCUMENTS = st.one_of(
    st.text(max_size=80),
    st.lists(st.text(max_size=20), max_size=12),
    st.sampled_from(["manuals", ["manuals"], ["manuals", "nope"], "MANUALS", " manuals "]),
    st.integers(),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
    st.lists(st.one_of(st.integers(), st.none(), st.text(max_size=5)), min_size=1, max_size=4),
)


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    documents=DOCUMENTS,
    question=st.text(max_size=200),
    fallback=st.sampled_from([None, True, False]),
)
def test_fuzz_documents_is_answered_or_refused_clearly(server, documents, question, fallback):
    body = {"prompt": question or "x", "documents": documents, "max_tokens": 2}
    if fallback is not None:
        body["documents_fallback"] = fallback
    r = post_json(f"{server.url}/completions", body)
    assert r.status_code in (200, 400), (r.status_code, r.text[:300], body)
    if r.status_code == 400:
        err = r.json()["error"]
        assert (
            err["param"] in ("documents", "documents_fallback", "prompt")
            and err["message"].count("\n") == 0
        ), err
    elif documents is not None:
        assert isinstance(r.json()["sources"], list)


def test_the_server_answers_afterwards(server):
    """After the fuzzing above: alive, and answering plainly."""
    assert server.proc.poll() is None, server.stderr()
    r = post_json(f"{server.url}/completions", {"prompt": "Hi", "max_tokens": 4})
    assert r.status_code == 200, r.text
    assert "Traceback" not in server.stderr()
