"""The three modalities, named once for every layer (the ground floor: imports nothing of the
project).

``MODALITIES`` is also the order the pipeline keeps them in (feature columns, model inputs, the
simulation's dimensions); ``SHORT`` is the one-letter name models give a modality's blocks.
"""

from __future__ import annotations

from typing import Literal

Modality = Literal["text", "audio", "vision"]
MODALITIES: tuple[Modality, ...] = ("text", "audio", "vision")
SHORT: dict[str, str] = {"text": "t", "audio": "a", "vision": "v"}
