"""The MuJoCo G1 simulator: the project's own G1 model (g1_model), the tabletop scene and in-process
``G1Sim`` (scene), the DDS bridge (bridge) and ``dit4dit-sim`` (cli). Modules import mujoco themselves,
so importing this package stays light."""
