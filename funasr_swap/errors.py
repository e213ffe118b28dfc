"""`SettingError`: a ValueError about settings a caller chose, which names each setting as that caller spelled it.

A library caller passed `max_audio_seconds=60`; a `funasr-swap` user typed `--max-seconds 60`. The error keeps the
settings apart from its text, so that `str()` spells the Python names and the CLI its flags (`funasr_swap.cli.FLAGS`).
Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["NAMED", "SettingError"]

NAMED = ...  # a setting's value that the message leaves out: `use another {output_dir}` names it only


class SettingError(ValueError):
    """`message` holds a `{name}` field per setting; `settings` gives each one's value (`NAMED`: the name alone).
    `owner` prefixes the Python names (`TrainConfig.audio_cache='fbank'`)."""

    def __init__(self, message: str, *, owner: str = "", **settings: object) -> None:
        self.message, self.owner, self.settings = message, owner, settings
        super().__init__(self.spelled())

    def spelled(self, flags: Mapping[str, str] | None = None) -> str:
        """The message with each setting as Python spells it (`name=value`), or, where `flags` maps its name, as
        the command line does (`--flag value`; a flag alone for `NAMED` or True)."""

        def spell(name: str, value: object) -> str:
            flag = (flags or {}).get(name)
            shown = f"{value:g}" if isinstance(value, float) else None  # 60, not 60.0
            if flag is None:
                name = f"{self.owner}.{name}" if self.owner else name
                return name if value is NAMED else f"{name}={shown or repr(value)}"
            return flag if value is NAMED or value is True else f"{flag} {shown or value}"

        return self.message.format(**{name: spell(name, value) for name, value in self.settings.items()})

    def where(self, place: str) -> SettingError:
        """The same error said of `place` (`train.jsonl:17: ...`)."""
        escaped = place.replace("{", "{{").replace("}", "}}")
        return SettingError(f"{escaped}: {self.message}", owner=self.owner, **self.settings)
