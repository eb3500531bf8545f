"""Ask your documents, in the window: the collection picker with its indexing progress
(picker, indexing), the search that fills Dolly's Input: slot off the GUI thread (ask), and
the numbered sources under the answer (sources)."""
