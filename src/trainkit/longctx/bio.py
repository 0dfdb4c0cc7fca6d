"""Generated biographies: fake people with dated facts, deterministic by ``random.Random``.

Each :class:`Person` has a unique name, a birth year and place and four later dated
events (study, move, founding a company, an award), told as one paragraph in
chronological order. Names, towns and companies are built from syllables, so no fact can
be known from pretraining: the answer must come from the context.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

_FIRST = (
    "Ada",
    "Bruno",
    "Clara",
    "Dmitri",
    "Elena",
    "Farid",
    "Greta",
    "Hugo",
    "Ines",
    "Jonas",
    "Kira",
    "Lars",
    "Mira",
    "Nikolai",
    "Olga",
    "Pavel",
    "Quinn",
    "Rosa",
    "Stefan",
    "Tara",
    "Ugo",
    "Vera",
    "Wim",
    "Xenia",
    "Yusuf",
    "Zora",
    "Anton",
    "Beatrix",
    "Cyril",
    "Dora",
    "Emil",
    "Frida",
    "Gustav",
    "Hilde",
    "Ivan",
    "Jana",
    "Karl",
    "Lena",
    "Milo",
    "Nora",
)
_SYL = (
    "ba",
    "dor",
    "el",
    "fen",
    "gar",
    "hal",
    "is",
    "jor",
    "kel",
    "lun",
    "mar",
    "nor",
    "ol",
    "pra",
    "quin",
    "ros",
    "sel",
    "tam",
    "ul",
    "ven",
    "wyn",
    "xan",
    "yor",
    "zel",
)
_FIELDS = (
    "chemistry",
    "history",
    "music",
    "mathematics",
    "architecture",
    "medicine",
    "law",
    "geology",
    "painting",
    "economics",
    "astronomy",
    "linguistics",
)
_AWARDS = (
    "Golden Compass",
    "Silver Quill",
    "Harbor Medal",
    "Northern Star Prize",
    "Iron Lantern",
    "Crystal Key",
    "Amber Laurel",
    "Blue Anchor Award",
)
_KINDS = (
    "bakery",
    "shipyard",
    "publishing house",
    "clinic",
    "observatory",
    "orchestra",
    "bicycle factory",
    "law firm",
    "bookshop",
    "design studio",
)


def _word(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(_SYL) for _ in range(n)).capitalize()


@dataclass
class Person:
    """One fake person; ``events`` are ``(year, key, sentence)`` in chronological order."""

    name: str
    born: int
    birthplace: str
    field_of_study: str
    city: str
    company: str
    award: str
    events: list[tuple[int, str, str]] = field(default_factory=list)

    def paragraph(self) -> str:
        return " ".join(s for _, _, s in self.events)

    def year(self, key: str) -> int:
        return next(y for y, k, _ in self.events if k == key)

    def summary(self) -> str:
        """The reference summary: every dated fact, in order, one short clause each."""
        return (
            f"{self.name} was born in {self.born} in {self.birthplace}, studied "
            f"{self.field_of_study} (graduating in {self.year('study')}), moved to {self.city} "
            f"in {self.year('move')}, founded {self.company} in {self.year('found')} and won the "
            f"{self.award} in {self.year('award')}."
        )


def make_person(rng: random.Random, used_names: set[str]) -> Person:
    """A new person whose name is not in ``used_names`` (which is updated)."""
    while True:
        name = f"{rng.choice(_FIRST)} {_word(rng, 2)}"
        if name not in used_names:
            used_names.add(name)
            break
    born = rng.randint(1890, 1990)
    birthplace, city = _word(rng, 2) + "ton", _word(rng, 2) + "burg"
    fos = rng.choice(_FIELDS)
    company = f"the {_word(rng, 2)} {rng.choice(_KINDS)}"
    award = rng.choice(_AWARDS)
    y_study = born + rng.randint(20, 26)
    y_move = y_study + rng.randint(1, 8)
    y_found = y_move + rng.randint(1, 10)
    y_award = y_found + rng.randint(2, 15)
    first = name.split()[0]
    p = Person(name, born, birthplace, fos, city, company, award)
    p.events = [
        (born, "born", f"{name} was born in {born} in the town of {birthplace}."),
        (y_study, "study", f"In {y_study}, {first} graduated in {fos}."),
        (y_move, "move", f"In {y_move}, {first} moved to {city}."),
        (y_found, "found", f"In {y_found}, {first} founded {company}."),
        (y_award, "award", f"In {y_award}, {first} received the {award}."),
    ]
    return p


#: single-detail questions: key -> (question template, answer getter)
SINGLE_QUESTIONS = {
    "born": ("In which year was {name} born?", lambda p: str(p.born)),
    "birthplace": ("In which town was {name} born?", lambda p: p.birthplace),
    "study": ("What did {name} study?", lambda p: p.field_of_study),
    "move": ("To which city did {name} move?", lambda p: p.city),
    "found": ("In which year did {name} found {company}?", lambda p: str(p.year("found"))),
    "award": ("Which award did {name} receive?", lambda p: p.award),
}

#: the event sentence that holds each single-detail answer
ANSWER_EVENT = {
    "born": "born",
    "birthplace": "born",
    "study": "study",
    "move": "move",
    "found": "found",
    "award": "award",
}
