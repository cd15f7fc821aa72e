"""The bottom layer: helpers every other layer may use and that import nothing of fif — seeding, atomic
file writes, device and precision, optimizer rules, FLOP counting, typed dataclass conversion, name
suggestions and the version."""
