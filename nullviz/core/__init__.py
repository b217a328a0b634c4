"""The foundation every layer uses: the exceptions (``errors``), validated parameters (``params``), seeded
random streams (``seeds``) and files replaced whole (``atomic``). Imports nothing else from nullviz."""
