"""The W&B-compatible hyperparameter search: `spec` reads and checks a sweep file, `search` proposes each trial's
parameters, `runner` runs the trials without a W&B server, `report` ranks and plots them; `python -m fer_hf.sweep`
(`__main__`) is the command. Imports go down that list in reverse: report -> runner -> search -> spec."""
