"""Making a model folder from another: export of a PyTorch checkpoint (torch, in a child
process only), NNCF compression, tokenizer conversion, export support installed on demand,
and the child-job protocol (jobs) both ends speak.

Part of models: may import the rest of models and the basics.
"""
