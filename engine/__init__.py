"""Inference (llama.cpp), the torch twin, working-memory cells, the weight overlay and its learner.

The UI talks to the engine only through ``engine.engine.Engine``; the engine never imports the UI.
"""
