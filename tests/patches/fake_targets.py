"""Stand-in targets for testing the patch machinery itself (not SGLang)."""


def greet() -> str:
    return "original"


class Box:
    label = "original"

    def describe(self) -> str:
        return "original"

    @staticmethod
    def kind() -> str:
        return "original"


REGISTRY: dict[str, list] = {"existing": [greet]}
