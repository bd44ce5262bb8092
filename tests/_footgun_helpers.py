"""A module whose functions read this module's own globals: a source reached through another
module (``_footgun_helpers.scaled(x)``), which the guards must follow like the caller's globals.
The tests change these globals between calls and put them back."""

from __future__ import annotations

import dyngrad.nn.functional as F

GAIN = 2.0
ACT = F.relu


def scaled(x):
    return x * GAIN


def activate(x):
    return ACT(x)
