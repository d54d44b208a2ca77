"""The matching table `cvlth study` prints: extreme and universal matching sparsity per row."""

from rich.console import Console

from cvlth.cli.study_cmd import matching_rich_table
from cvlth.study.matching import PRETRAINING_TASK, matching


def test_printed_table_holds_extreme_and_universal_sparsity() -> None:
    # a: matches at 0.2 and 0.36 on task one, only at 0.2 on task two -> universal 0.2.
    results = [
        matching("s/a", "one", [0.90, 0.92], {0.2: [0.95], 0.36: [0.93]}),
        matching("s/a", "two", [0.80, 0.80], {0.2: [0.81], 0.36: [0.70]}),
        matching("s/a", PRETRAINING_TASK, [0.5], {0.2: [0.6]}),
    ]
    console = Console(record=True, width=120)
    console.print(matching_rich_table(results))
    lines = [line for line in console.export_text().splitlines() if line.startswith("│ s/a")]
    cells = [[cell.strip() for cell in line.strip("│").split("│")] for line in lines]
    assert cells[0] == ["s/a", "one", "0.9100±0.0141", "36.00%", "20.00%"]
    assert cells[1] == ["s/a", "two", "0.8000±0.0000", "20.00%", "20.00%"]
    assert cells[2] == ["s/a", PRETRAINING_TASK, "0.5000±0.0000", "20.00%", ""]  # Fig. 2 rows: no universal
