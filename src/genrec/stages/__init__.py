"""One module per pipeline stage, each with one public entry function.

The CLI and the KFP components call these functions and nothing else: a component only moves
inputs and outputs.
"""
