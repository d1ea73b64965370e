from __future__ import annotations
"""The embedded default's harness: scripted expert, demonstration collection, evaluation and the demo.

It stands above drivers/ (the simulator and its task scenes) and runtime/ (the safety layer, the programs), so the
expert can drive the arm through the same safety layer as the robot does.
"""
