"""KAN commands for ``trainkit kan <command>`` (no heavy imports here)."""

from trainkit.commands import Command

COMMANDS = {
    "fit": Command(
        help="fit a KAN to a formula or a CSV file, with grid extension",
        description=(
            "Fit a KAN to a formula (--formula 'exp(sin(pi*x1)+x2**2)') or a CSV file "
            "(--data file.csv --target y), training through the grids in train.grids. "
            "Writes the model, history, loss plot and resolved config to a run directory."
        ),
        run="trainkit.kan.recipes:run_fit",
        config="trainkit.kan.recipes:KanFitConfig",
        flags={
            "--formula": "data.formula",
            "--data": "data.csv",
            "--target": "data.target",
            "--width": "model.width",
            "--grids": "train.grids",
            "--steps": "train.steps",
            "--seed": "model.seed",
            "--out": "out.root",
        },
    ),
}
