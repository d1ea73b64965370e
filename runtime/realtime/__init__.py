"""The real-time room: the 500 Hz loop, the safety layer and the publish, in a process of their own.

Every command to the robot is made here (loop.py), through the safety layer (safety.py: limits against the
command last sent; watchdogs.py: when to damp), against what was last sent. The controller hands it plans
(plan.py) through shared memory (shm.py) via client.py; wire.py records and checks what went out.
"""
