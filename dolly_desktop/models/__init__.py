"""Getting a model folder onto disk: folder format and precision (folder), the catalog, the
one listing of catalog x installed x partial (listing), the store, downloads, export (torch,
in a child process only), NNCF compression, tokenizer conversion, capacity checks, cancel,
and the child-job protocol (jobs).

May import: the basics at the package root (errors, paths, logs, atomic). Nothing above.
"""
