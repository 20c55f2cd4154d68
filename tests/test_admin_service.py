"""AdminService is registered from one handler object per feature: every method of the
contract answered by exactly one, or the controller does not start."""

from __future__ import annotations

import pytest

from controller.api.admin_service import SERVICE, admin_methods


class _Answers:
    """A handler object answering the methods it is made with."""

    def __init__(self, *names: str) -> None:
        for name in names:
            setattr(self, name, lambda *args, name=name: name)


def test_every_method_from_its_one_handler() -> None:
    names = [m.name for m in SERVICE.methods]
    half = len(names) // 2
    first, second = _Answers(*names[:half]), _Answers(*names[half:])
    found = admin_methods([first, second])
    assert sorted(found) == sorted(names)
    assert found[names[0]]() == names[0]
    assert found[names[-1]]() == names[-1]


def test_a_method_nobody_answers_stops_the_start() -> None:
    names = [m.name for m in SERVICE.methods]
    with pytest.raises(TypeError, match=f"nobody answers: {names[-1]}$"):
        admin_methods([_Answers(*names[:-1])])


def test_a_method_answered_twice_stops_the_start() -> None:
    names = [m.name for m in SERVICE.methods]
    with pytest.raises(TypeError, match=f"AdminService.{names[0]} is answered twice"):
        admin_methods([_Answers(*names), _Answers(names[0])])
