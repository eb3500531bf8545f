"""The CPU plugin's properties for the app's engines.

rule.py: the properties chosen at load from what the CPU offers (the family rule).
calibration.py: the candidates, the objective (the expected time of a whole answer for the
person's mix of prompt and answer lengths) and the per-machine cache of measured figures.
measure.py: measuring the candidates in turns (a fake clock and runner in tests).
child.py: calibration in a child process, which the engine stops at once when a request comes.
"""
