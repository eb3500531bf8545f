"""Qt-free core shared by the GUI, the CLI and the tests. Nothing here imports Qt."""
