"""How a job's emoji are drawn, chosen per job at upload: the gateway validates them, the job record keeps
them, the worker draws with them and the timeline records them."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict

Style = Literal["badge", "cover"]
STYLES: tuple[str, ...] = get_args(Style)
TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off", "")


class RenderOptions(BaseModel):
    """`badge`: the emoji beside the head, the face stays visible. `cover`: the emoji over the whole face on
    every frame the person is tracked. `labels`: the emotion's name under each emoji."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    style: Style = "badge"
    labels: bool = False

    @classmethod
    def from_fields(cls, style: str | None, labels: str | bool | None) -> RenderOptions:
        """From form or JSON fields; ValueError with a message that names the allowed values."""
        style = (style or "badge").strip().lower()
        if style not in STYLES:
            raise ValueError(f"style must be one of {', '.join(STYLES)} (got {style!r})")
        if isinstance(labels, bool):
            return cls(style=style, labels=labels)
        word = (labels or "").strip().lower()
        if word not in TRUE_WORDS + FALSE_WORDS:
            raise ValueError(f"labels must be true or false (got {labels!r})")
        return cls(style=style, labels=word in TRUE_WORDS)

    def to_record(self) -> dict[str, str]:
        """The fields kept in the job's Redis hash."""
        return {"style": self.style, "labels": "1" if self.labels else "0"}

    @classmethod
    def from_record(cls, raw: dict) -> RenderOptions:
        """From the job's Redis hash; a job recorded before options existed gets the defaults."""
        style = raw.get("style") or "badge"
        return cls(style=style if style in STYLES else "badge", labels=raw.get("labels") == "1")
