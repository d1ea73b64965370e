"""Devices: the G1 over unitree_sdk2py, cameras, teleop devices, and the MuJoCo G1 simulator."""
