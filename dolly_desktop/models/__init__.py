"""Getting a model folder onto disk: folder format and precision (folder), the catalog, the
one listing of catalog x installed x partial (listing), which model to use (choice), every name
that reaches the file system (names), the store, downloads, capacity checks, cancel, Dolly's
chat template, and child jobs over the store (child). Making one folder from another (export,
compression, tokenizer conversion, the child-job protocol) lives in models/convert.

May import: the basics at the package root (errors, paths, logs, atomic). Nothing above.
"""
