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
    "discover": Command(
        help="the paper's science workflow: sparse fit, prune, refine, snap to symbols, formula",
        description=(
            "Discover a formula from data (--formula 'exp(sin(pi*x1)+x2**2)' or --data "
            "file.csv --target y): fit a KAN with sparsity, prune, refine the grid, snap "
            "every edge to a library function, fine-tune, and print the formula with its "
            "test RMSE. Plots before/after pruning, both models and summary.json go to a "
            "run directory."
        ),
        run="trainkit.kan.discover:run_discover",
        config="trainkit.kan.discover:KanDiscoverConfig",
        flags={
            "--formula": "data.formula",
            "--data": "data.csv",
            "--target": "data.target",
            "--width": "model.width",
            "--seed": "model.seed",
            "--lamb": "sparse.lamb",
            "--grids": "refine.grids",
            "--out": "out.root",
        },
    ),
}
