"""Who teaches whom under a fan-out limit (`--fanout K`): each student is taught by its K most
useful teachers for the classes it is weak on, not by every other peer.

Teaching all pairs costs P (P - 1) model pulls and searches a round, so a round grows with the
square of the peers. With a fan-out of K it costs P K. The choice uses only what peers already
exchange: every published model carries a *profile*, its per-class accuracy on the publisher's
validation slice (or on its training data when it keeps no slice), in the blob's spec. Every
peer computes the same plan from the same profiles, so no one has to hand it out: a teacher
teaches a student only where the plan names it among that student's teachers.

How useful teacher t is to student s: the sum over s's classes of how much better t does on a
class than s does, max(0, a_t(c) - a_s(c)), an unknown accuracy (a class a peer never saw)
counting as 0. So a teacher that knows a class the student lacks counts for most, and one
weaker than the student everywhere counts for nothing. Once s has teachers, t counts only for
what it adds over the best of them: max(0, a_t(c) - max(a_s(c), a_t'(c) for s's teachers t')),
so that K teachers cover the classes s lacks between them instead of K teachers of one class
(under label skew a peer lacks most classes and each teacher knows a few).

Teachers are assigned greedily, the most useful pair first (ties by student, then teacher id),
each teacher to at most 2K students so that a teacher good at everything does not teach the
whole federation alone while others idle; a student still short of K teachers then takes the
most useful ones left regardless of that cap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from peer.core.blob import InvalidPayload

PROFILE_KEY = "profile"


@dataclass(frozen=True)
class Profile:
    """A published model's per-class accuracy (None: no rows of that class to judge on)."""

    classes: tuple[str, ...]
    accuracy: tuple[float | None, ...]
    on: str = "validation"  # what the accuracy was measured on: validation or training

    def to_spec(self) -> dict[str, Any]:
        return {"accuracy": list(self.accuracy), "on": self.on}

    def of(self, name: str) -> float:
        """Accuracy on class `name`; 0 where unknown or not a class of this model."""
        if name not in self.classes:
            return 0.0
        value = self.accuracy[self.classes.index(name)]
        return 0.0 if value is None else value


def profile_of(spec: Mapping[str, Any]) -> Profile | None:
    """The profile in a blob's spec (None if it has none); a malformed one raises InvalidPayload."""
    raw = spec.get(PROFILE_KEY)
    if raw is None:
        return None
    classes = spec.get("classes")
    if not isinstance(raw, dict) or not isinstance(classes, list):
        raise InvalidPayload("model profile must be an object beside the model's class list")
    accuracy, on = raw.get("accuracy"), raw.get("on", "validation")
    if (
        not isinstance(accuracy, list)
        or len(accuracy) != len(classes)
        or not all(
            a is None or (isinstance(a, (int, float)) and not isinstance(a, bool) and 0.0 <= a <= 1.0) for a in accuracy
        )
    ):
        raise InvalidPayload(f"model profile must give one accuracy in [0, 1] or null per class ({len(classes)})")
    if on not in ("validation", "training"):
        raise InvalidPayload(f"model profile 'on' must be validation or training, not {on!r}")
    return Profile(tuple(str(c) for c in classes), tuple(None if a is None else float(a) for a in accuracy), on)


def usefulness(teacher: Profile, student: Profile) -> float:
    """How much better `teacher` does than `student` on the student's classes, summed."""
    return sum(max(0.0, teacher.of(c) - student.of(c)) for c in student.classes)


def plan(profiles: Mapping[str, Profile | None], fanout: int) -> dict[str, list[str]]:
    """Student -> its teachers (sorted). `fanout` <= 0, or at least every other peer: all pairs.

    A peer without a profile is taught by and teaches others as if every accuracy were unknown.
    """
    ids = sorted(profiles)
    if fanout <= 0 or fanout >= len(ids) - 1:
        return {s: [t for t in ids if t != s] for s in ids}
    empty = {p: Profile((), ()) for p in ids}
    known = {p: profiles[p] or empty[p] for p in ids}
    # per student, the best accuracy per class among the student and its teachers so far: a teacher
    # is worth what it adds over that, so a student's teachers cover its classes between them
    best = dict(known)
    score = {(t, s): usefulness(known[t], best[s]) for s in ids for t in ids if t != s}
    cap = 2 * fanout
    teachers: dict[str, list[str]] = {s: [] for s in ids}
    load = dict.fromkeys(ids, 0)
    # most useful pair first (ties by student, then teacher id), each teacher to at most 2K students;
    # then a student still short takes the most useful teachers left regardless of that cap
    for capped in (True, False):
        while True:
            open_pairs = [(t, s) for (t, s) in score if len(teachers[s]) < fanout and not (capped and load[t] >= cap)]
            if not open_pairs:
                break
            t, s = min(open_pairs, key=lambda ts: (-score[ts], ts[1], ts[0]))
            teachers[s].append(t)
            load[t] += 1
            del score[(t, s)]
            cls = best[s].classes
            best[s] = Profile(cls, tuple(max(best[s].of(c), known[t].of(c)) for c in cls), best[s].on)
            for other in ids:
                if (other, s) in score:
                    score[(other, s)] = usefulness(known[other], best[s])
    return {s: sorted(ts) for s, ts in teachers.items()}


def by_teacher(teachers: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """A plan (student -> teachers) turned around: teacher -> its students, every peer listed."""
    out: dict[str, list[str]] = {p: [] for p in teachers}
    for s, ts in teachers.items():
        for t in ts:
            out.setdefault(t, []).append(s)
    return {t: sorted(ss) for t, ss in out.items()}


def students_of(teacher: str, profiles: Mapping[str, Profile | None], fanout: int) -> list[str]:
    """The students `teacher` teaches under the plan of `profiles`."""
    return by_teacher(plan(profiles, fanout)).get(teacher, [])
