"""The catalogue of voices: which engine speaks, with whose voice, in which split.

A split is a property of the person behind a voice, not of the engine: kal is both flite's
kal16 and festival's kal_diphone, awb is flite's awb and RHVoice's alan (built from the same
CMU ARCTIC recordings), us1/us2/us3/en1 are both mbrola databases and festival voices. So
every voice names its `speaker`, and a speaker belongs to exactly one split. The assignment
is fixed here (not drawn per seed) so that dev and test mean the same thing in every run;
recipes/README.md explains it.

For espeak-ng there is no person: a variant (m3, f2, klatt, ...) is a timbre, the accent (en-us,
en-gb-scotland, ...) a pronunciation rule set. The variant is what a listener recognizes
across accents, so the speaker is the variant, and all eight accents of a held-out variant
are held out together.
"""

import functools
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# Reserved for external evaluation (CORPUS.md): never in the catalogue, never synthesized.
# Voices from PyPI packages are reserved too; the catalogue holds Debian engines only.
RESERVED_SPEAKERS = frozenset({"slt", "clb", "pico-en-us"})

ENGINES = ("espeak-ng", "mbrola", "flite", "festival", "pico", "rhvoice")

# Share of training utterances per engine. The natural-sounding engines carry the sound
# that test is scored on and three quarters of the audio; the formant and foreign-accent
# voices add variety. (With half the audio robotic and the earlier training recipe, the
# demo's models stayed on the CTC plateau; both changed together: docs/TRAINING.md.)
TRAIN_ENGINE_WEIGHTS = {
    "espeak-ng": 0.10,
    "mbrola": 0.15,
    "festival": 0.30,
    "rhvoice": 0.25,
    "flite": 0.20,
    "pico": 0.0,  # its one unreserved voice (en-GB) is a test speaker
}

LICENCES = {
    "espeak-ng": "GPL-3+ (Debian main)",
    "mbrola": "mbrola binary AGPL-3+; voice databases non-free, non-commercial use only",
    "flite": "BSD-style CMU licence (Debian main)",
    "festival": "X11-style; rab and don need festlex-oald, non-commercial use only; "
    "us1-us3/en1 use mbrola databases, non-commercial use only",
    "pico": "Apache-2.0 with binary-only language data (Debian non-free)",
    "rhvoice": "LGPL-2.1+ (engine, alan, bdl); evgeniy-eng and lyubov CC-BY-NC-ND-4.0",
}

ESPEAK_ACCENTS = (
    "en-us", "en", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd",
    "en-029", "en-us-nyc",
)  # fmt: skip
ESPEAK_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt3", "adam", "Alex", "Andy", "Annie", "benjamin", "david", "ed",
    "edward", "linda", "max", "Michael", "Mike", "paul", "rob", "robert", "steph", "travis",
    "victor", "norbert", "shelby", "grandma", "grandpa",
)  # fmt: skip
# mbrola diphone sets of other languages: espeak-ng reads English with that accent.
MBROLA_FOREIGN = (
    "de1", "de2", "de3", "de4", "de5", "fr1", "fr4", "nl2", "sw1", "sw2", "af1", "pl1",
    "hu1", "gr2", "ro1",
)  # fmt: skip

# Held-out speakers; every other catalogue speaker is a training speaker.
# test: natural-sounding families only, so the headline score means something.
# dev: two natural speakers plus one formant and one foreign-accent voice.
TEST_SPEAKERS = frozenset({"bdl", "evgeniy", "ked", "us2", "pico-en-gb", "rms"})
DEV_SPEAKERS = frozenset({"don", "us3", "espeak-f4", "nl2"})


@dataclass(frozen=True)
class Voice:
    id: str  # unique, also the manifest's "voice": "flite-kal16", "espeak-ng-en-us+m3", ...
    engine: str  # one of ENGINES
    name: str  # what the engine is told: "kal16", "en-us+m3", "mb-us1", "kal_diphone", ...
    speaker: str  # the person (or espeak variant) behind the voice

    @property
    def split(self) -> str:
        if self.speaker in TEST_SPEAKERS:
            return "test"
        if self.speaker in DEV_SPEAKERS:
            return "dev"
        return "train"


def _catalogue() -> tuple[Voice, ...]:
    voices = [
        Voice(f"espeak-ng-{accent}+{variant}", "espeak-ng", f"{accent}+{variant}",
              f"espeak-{variant.lower()}")
        for variant in ESPEAK_VARIANTS
        for accent in ESPEAK_ACCENTS
    ]  # fmt: skip
    voices += [Voice(f"mbrola-{db}", "mbrola", f"mb-{db}", db) for db in ("us1", "us2", "us3")]
    voices.append(Voice("mbrola-en1", "mbrola", "mb-en1", "en1"))
    voices += [Voice(f"mbrola-{db}", "mbrola", f"mb-{db}-en", db) for db in MBROLA_FOREIGN]
    voices += [
        Voice("flite-kal16", "flite", "kal16", "kal"),
        Voice("flite-awb", "flite", "awb", "awb"),
        Voice("flite-rms", "flite", "rms", "rms"),
    ]
    voices += [
        Voice(f"festival-{who}", "festival", f"{who}_diphone", who)
        for who in ("kal", "ked", "rab", "don")
    ]
    voices += [
        Voice(f"festival-{who}", "festival", f"{who}_mbrola", who)
        for who in ("us1", "us2", "us3", "en1")
    ]
    voices.append(Voice("pico-en-GB", "pico", "en-GB", "pico-en-gb"))
    voices += [
        Voice("rhvoice-alan", "rhvoice", "alan", "awb"),
        Voice("rhvoice-bdl", "rhvoice", "bdl", "bdl"),
        Voice("rhvoice-evgeniy-eng", "rhvoice", "evgeniy-eng", "evgeniy"),
        Voice("rhvoice-lyubov", "rhvoice", "lyubov", "lyubov"),
    ]
    return tuple(voices)


CATALOGUE = _catalogue()


@functools.cache
def _flite_voices() -> frozenset[str]:
    if shutil.which("flite") is None:
        return frozenset()
    out = subprocess.run(["flite", "-lv"], capture_output=True, text=True).stdout
    return frozenset(out.split(":", 1)[-1].split())


def is_available(voice: Voice) -> bool:
    """Whether the engine and the voice's data are installed (checked without synthesizing)."""
    if voice.engine == "espeak-ng":
        return shutil.which("espeak-ng") is not None
    if voice.engine == "mbrola":
        db = voice.name.removeprefix("mb-").removesuffix("-en")
        return (
            shutil.which("espeak-ng") is not None
            and shutil.which("mbrola") is not None
            and Path(f"/usr/share/mbrola/{db}/{db}").exists()
        )
    if voice.engine == "flite":
        return voice.name in _flite_voices()
    if voice.engine == "festival":
        return (
            shutil.which("festival") is not None
            and Path(f"/usr/share/festival/voices/english/{voice.name}").is_dir()
        )
    if voice.engine == "pico":
        return shutil.which("pico2wave") is not None and any(
            Path("/usr/share/pico/lang").glob(f"{voice.name}_*")
        )
    if voice.engine == "rhvoice":
        return (
            shutil.which("RHVoice-test") is not None
            and Path(f"/usr/share/RHVoice/voices/{voice.name}").is_dir()
        )
    raise ValueError(f"unknown engine {voice.engine!r}")


def available_voices(engines: tuple[str, ...] = ENGINES) -> tuple[list[Voice], list[Voice]]:
    """(available, unavailable) catalogue voices of the given engines, in catalogue order."""
    chosen = [v for v in CATALOGUE if v.engine in engines]
    available = [v for v in chosen if is_available(v)]
    return available, [v for v in chosen if v not in available]
