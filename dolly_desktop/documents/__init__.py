"""Ask your documents: a person's own files as passages for Dolly's `Input:` slot.

parse (a file -> blocks of text with their page and heading, or the reason it is skipped),
chunk (blocks -> pieces of about 256 tokens counted with the model's tokenizer), index
(collections of folders in SQLite FTS5, incremental, committed per file), retrieve (a question
-> ranked chunks -> the passage that fits the token budget).

Sits between history and generation: it may use generation's prompt builder and the basics;
no Qt, no server, no OpenVINO (the tokenizer is the `tokenizers` library's, no torch).
"""
