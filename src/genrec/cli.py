"""The library's command line: one subcommand per stage, plus ui and the config helpers.

The installed `genrec` command is pipelines/cli.py, which adds the pipeline commands (run, compile) to
these: the library never imports kfp or the pipeline packages. `python -m genrec.cli` runs the stage
commands alone (torchrun uses it for multi-process training).

Every command takes `--config FILE` and trailing `key.sub=value` overrides. Errors a user can fix
(bad config, bad input, a failed validation gate) print one clear message and exit with code 2.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import uuid
from pathlib import Path
from typing import List, Optional

import typer

from genrec.config import PipelineConfig, describe_fields, load_config
from genrec.errors import GenrecError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False,
                  help="genrec: train GenRec-style generative recommenders. Stages run alone or as one KFP pipeline.")

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config (see configs/). Default: built-in defaults.")
OverridesArg = typer.Argument(None, help="key.sub=value overrides, e.g. simulator.n_users=500", show_default=False)
RunIdOpt = typer.Option("", "--pipeline-run-id", help="Group this stage's MLflow run with others of one pipeline run (default: new).")


def friendly(fn):
    """Print a GenrecError as one line and exit 2, without a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GenrecError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2)
    return wrapper


def resolve_config(config: Optional[Path], overrides: Optional[List[str]], here: bool = True) -> PipelineConfig:
    """The config file + overrides; refuses credentials in the config or in MLFLOW_TRACKING_URI. here: the run is on
    this machine, so run.work_dir (and a local run.data_root) becomes absolute (stages may run in other processes and folders: kfp.local,
    spark-submit); a config for a cluster keeps it as written (the pods resolve it in their own file system)."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = load_config(config, overrides or [])
    if here:
        cfg.run.work_dir = str(Path(cfg.run.work_dir).resolve())
        if cfg.run.data_root and "://" not in cfg.run.data_root:
            cfg.run.data_root = str(Path(cfg.run.data_root).resolve())
    from genrec import tracking

    tracking.tracking_uri(cfg)  # the tracking store comes from the environment; refuse a URI with a password early
    return cfg


def _out(cfg: PipelineConfig, out: Optional[Path], name: str) -> Path:
    return out or Path(cfg.run.work_dir) / "stages" / name


def _existing(path: Path) -> Optional[Path]:
    """An optional input's default folder, when it is there."""
    return path if path.is_dir() else None


@app.command()
@friendly
def ingest(config: Optional[Path] = ConfigOpt, out: Optional[Path] = typer.Option(None, help="Output folder [work_dir/stages/ingest]."),
           pipeline_run_id: str = RunIdOpt, overrides: Optional[List[str]] = OverridesArg):
    """Reads the configured source (simulator, movielens, amazon_beauty, parquet); writes canonical
    events.parquet, items.parquet, manifest.json (and ground_truth.npz for the simulator) to OUT."""
    from genrec.stages.ingest import run_ingest

    cfg = resolve_config(config, overrides)
    out = _out(cfg, out, "ingest")
    manifest = run_ingest(cfg, out, pipeline_run_id or uuid.uuid4().hex)
    typer.echo(f"ingested {manifest['n_events']:,} events, {manifest['n_items']:,} items -> {out}")


@app.command("validate-events")
@friendly
def validate_events(config: Optional[Path] = ConfigOpt,
                    input: Optional[Path] = typer.Option(None, "--input", help="The ingest folder [work_dir/stages/ingest]."),
                    out: Optional[Path] = typer.Option(None, help="Output folder [work_dir/stages/validated]."),
                    pipeline_run_id: str = RunIdOpt, overrides: Optional[List[str]] = OverridesArg):
    """Reads the ingest folder; writes validated events/items, quarantine/, report.json and Great
    Expectations Data Docs (gx/uncommitted/data_docs/local_site/index.html) to OUT. Exit 2 if the gate stops."""
    from genrec.stages.validate_events import run_validate_events

    cfg = resolve_config(config, overrides)
    out = _out(cfg, out, "validated")
    report = run_validate_events(cfg, input or _out(cfg, None, "ingest"), out, pipeline_run_id or uuid.uuid4().hex)
    for t in report["tables"]:
        typer.echo(f"{t['table']}: {t['rows_in']:,} in, {t['rows_out']:,} out, {t['rows_quarantined']:,} quarantined")
    typer.echo(f"Data Docs: {report['data_docs']}")


@app.command()
@friendly
def sessionize(config: Optional[Path] = ConfigOpt,
               input: Optional[Path] = typer.Option(None, "--input", help="The validated folder [work_dir/stages/validated]."),
               out: Optional[Path] = typer.Option(None, help="Output folder [work_dir/stages/sessionized]."),
               pipeline_run_id: str = RunIdOpt, overrides: Optional[List[str]] = OverridesArg):
    """Reads validated events; runs the Spark job; writes pages/ (partitioned by split), sessions/,
    pairs/ (co-engagement) and report.json to OUT."""
    from genrec.stages.sessionize import run_sessionize

    cfg = resolve_config(config, overrides)
    out = _out(cfg, out, "sessionized")
    report = run_sessionize(cfg, input or _out(cfg, None, "validated"), out, pipeline_run_id or uuid.uuid4().hex)
    typer.echo(json.dumps({k: v for k, v in report.items() if not k.endswith("_hist")}, indent=2))


@app.command("validate-pages")
@friendly
def validate_pages(config: Optional[Path] = ConfigOpt,
                   input: Optional[Path] = typer.Option(None, "--input", help="The sessionized folder [work_dir/stages/sessionized]."),
                   out: Optional[Path] = typer.Option(None, help="Output folder [work_dir/stages/pages]."),
                   pipeline_run_id: str = RunIdOpt, overrides: Optional[List[str]] = OverridesArg):
    """Reads sessionized pages; writes validated pages/, pairs/, quarantine/, report.json and Data Docs to OUT."""
    from genrec.stages.validate_pages import run_validate_pages

    cfg = resolve_config(config, overrides)
    out = _out(cfg, out, "pages")
    report = run_validate_pages(cfg, input or _out(cfg, None, "sessionized"), out, pipeline_run_id or uuid.uuid4().hex)
    typer.echo(f"pages per split: {report['pages_per_split']}; Data Docs: {report['data_docs']}")


@app.command("embed-items")
@friendly
def embed_items(config: Optional[Path] = ConfigOpt,
                validated: Optional[Path] = typer.Option(None, help="The validated folder [work_dir/stages/validated]."),
                pages: Optional[Path] = typer.Option(None, help="The validated pages folder, with pairs/ [work_dir/stages/pages]."),
                raw: Optional[Path] = typer.Option(None, help="The ingest folder: images, ground truth [work_dir/stages/ingest]."),
                out: Optional[Path] = typer.Option(None, help="Output folder [work_dir/stages/embeddings]."),
                pipeline_run_id: str = RunIdOpt, overrides: Optional[List[str]] = OverridesArg):
    """Reads the validated catalog, co-engagement pairs and item images; writes embeddings.npy (fine-tuned),
    embeddings_base.npy, item_ids.npy, head.safetensors and report.json (recall@10 before/after) to OUT."""
    from genrec.stages.embed_items import run_embed_items

    cfg = resolve_config(config, overrides)
    report = run_embed_items(cfg, validated or _out(cfg, None, "validated"), pages or _out(cfg, None, "pages"),
                             raw or _out(cfg, None, "ingest"), _out(cfg, out, "embeddings"), pipeline_run_id or uuid.uuid4().hex)
    typer.echo(json.dumps(report, indent=2))


@app.command("assign-sids")
@friendly
def assign_sids(config: Optional[Path] = ConfigOpt,
                embeddings: Optional[Path] = typer.Option(None, help="The embed-items folder [work_dir/stages/embeddings]."),
                validated: Optional[Path] = typer.Option(None, help="The validated folder (categories) [work_dir/stages/validated]."),
                out: Optional[Path] = typer.Option(None, help="Output folder [work_dir/stages/sids]."),
                pipeline_run_id: str = RunIdOpt, overrides: Optional[List[str]] = OverridesArg):
    """Reads item embeddings; writes RQ-KMeans codebooks.npz, sid_table.parquet (one unique SID per item), trie.npz,
    report.json (utilisation, reconstruction, collisions, NMI with categories) and the SID table's Data Docs to OUT."""
    from genrec.stages.assign_sids import run_assign_sids

    cfg = resolve_config(config, overrides)
    report = run_assign_sids(cfg, embeddings or _out(cfg, None, "embeddings"), validated or _out(cfg, None, "validated"),
                             _out(cfg, out, "sids"), pipeline_run_id or uuid.uuid4().hex)
    typer.echo(json.dumps(report, indent=2))


@app.command("train-sft")
@friendly
def train_sft(config: Optional[Path] = ConfigOpt,
              pages: Optional[Path] = typer.Option(None, help="The validated pages folder [work_dir/stages/pages]."),
              sids: Optional[Path] = typer.Option(None, help="The assign-sids folder [work_dir/stages/sids]."),
              out: Optional[Path] = typer.Option(None, help="Output folder [work_dir/stages/sft]."),
              pipeline_run_id: str = RunIdOpt, overrides: Optional[List[str]] = OverridesArg):
    """Reads the training pages and the SID table; trains the GenRec model with DeepSpeed (page-wise NTP by default);
    writes model/ (safetensors), checkpoints/ (a rerun resumes), ds_config.json and report.json to OUT.
    Several processes: torchrun --nproc_per_node N -m genrec.cli train-sft ... (or the deepspeed launcher)."""
    from genrec.stages.train_sft import run_train_sft

    cfg = resolve_config(config, overrides)
    report = run_train_sft(cfg, pages or _out(cfg, None, "pages"), sids or _out(cfg, None, "sids"), _out(cfg, out, "sft"),
                           pipeline_run_id or uuid.uuid4().hex)
    if os.environ.get("RANK", "0") == "0":
        typer.echo(json.dumps(report, indent=2))


@app.command("train-reward")
@friendly
def train_reward(config: Optional[Path] = ConfigOpt,
                 pages: Optional[Path] = typer.Option(None, help="The validated pages folder [work_dir/stages/pages]."),
                 sids: Optional[Path] = typer.Option(None, help="The assign-sids folder [work_dir/stages/sids]."),
                 raw: Optional[Path] = typer.Option(None, help="The ingest folder (the simulator's ground truth; "
                                                             "items.parquet for reward.item_features) "
                                                             "[work_dir/stages/ingest]."),
                 out: Optional[Path] = typer.Option(None, help="Output folder [work_dir/stages/reward]."),
                 pipeline_run_id: str = RunIdOpt, overrides: Optional[List[str]] = OverridesArg):
    """Reads the pages' exposures (engaged = 1, exposed only = 0) and the SID table; trains the SIM-style reward model;
    writes reward_model/, calibration.csv, report.md and report.json (AUC, log loss, ECE on the test day) to OUT."""
    from genrec.stages.train_reward import run_train_reward

    cfg = resolve_config(config, overrides)
    out = _out(cfg, out, "reward")
    run_train_reward(cfg, pages or _out(cfg, None, "pages"), sids or _out(cfg, None, "sids"), out,
                     pipeline_run_id or uuid.uuid4().hex, raw or _out(cfg, None, "ingest"))
    typer.echo((out / "report.md").read_text())


@app.command()
@friendly
def align(config: Optional[Path] = ConfigOpt,
          sft: Optional[Path] = typer.Option(None, help="The train-sft folder [work_dir/stages/sft]."),
          reward: Optional[Path] = typer.Option(None, help="The train-reward folder [work_dir/stages/reward]."),
          pages: Optional[Path] = typer.Option(None, help="The validated pages folder [work_dir/stages/pages]."),
          sids: Optional[Path] = typer.Option(None, help="The assign-sids folder [work_dir/stages/sids]."),
          embeddings: Optional[Path] = typer.Option(None, help="The embed-items folder [work_dir/stages/embeddings]."),
          raw: Optional[Path] = typer.Option(None, help="The ingest folder (LDPO: pseudo_exposures.parquet, when the "
                                                        "source logs them) [work_dir/stages/ingest]."),
          out: Optional[Path] = typer.Option(None, help="Output folder [work_dir/stages/aligned]."),
          pipeline_run_id: str = RunIdOpt, overrides: Optional[List[str]] = OverridesArg):
    """Aligns the SFT model with DeepSpeed by align.method: grpo_sr (rollouts, gated hybrid rewards, + alpha * NLL;
    reads REWARD and EMBEDDINGS) or ldpo (listwise preferences over each page's items + NTP [+ the rank head]); writes
    model/, checkpoints/ (a rerun resumes), ds_config.json and report.json to OUT. Several processes: torchrun as for
    train-sft."""
    from genrec.stages.align import run_align

    cfg = resolve_config(config, overrides)
    report = run_align(cfg, sft or _out(cfg, None, "sft"), reward or _out(cfg, None, "reward"),
                       pages or _out(cfg, None, "pages"), sids or _out(cfg, None, "sids"),
                       embeddings or _out(cfg, None, "embeddings"), _out(cfg, out, "aligned"),
                       pipeline_run_id or uuid.uuid4().hex, raw or _existing(_out(cfg, None, "ingest")))
    if os.environ.get("RANK", "0") == "0":
        typer.echo(json.dumps(report, indent=2))


@app.command()
@friendly
def evaluate(config: Optional[Path] = ConfigOpt,
             model: Optional[Path] = typer.Option(None, help="The model's folder (align's or train-sft's) "
                                                             "[work_dir/stages/aligned]."),
             sft: Optional[Path] = typer.Option(None, help="The SFT model the evaluated one was aligned from (row "
                                                           "genrec_sft); omit to skip."),
             reward: Optional[Path] = typer.Option(None, help="The train-reward folder (R@K); omit to skip."),
             raw: Optional[Path] = typer.Option(None, help="The ingest folder (true preference R@K on the simulator); "
                                                           "omit to skip."),
             pages: Optional[Path] = typer.Option(None, help="The validated pages folder [work_dir/stages/pages]."),
             sids: Optional[Path] = typer.Option(None, help="The assign-sids folder [work_dir/stages/sids]."),
             out: Optional[Path] = typer.Option(None, help="Output folder [work_dir/stages/eval]."),
             pipeline_run_id: str = RunIdOpt, overrides: Optional[List[str]] = OverridesArg):
    """Reads the model, the test pages and the SID table; writes HR@K / NDCG@K / Recall@K / HaR (and R@K with a reward
    model) of GenRec and the baselines to OUT (metrics.md, metrics.csv, metrics.json, intervals.json, paired.json: GenRec
    minus each baseline, and every method's per-request top-K in topk.parquet) and prints the table."""
    from genrec.stages.evaluate import run_evaluate

    cfg = resolve_config(config, overrides)
    out = _out(cfg, out, "eval")
    run_evaluate(cfg, model or _out(cfg, None, "aligned"), pages or _out(cfg, None, "pages"),
                 sids or _out(cfg, None, "sids"), out, pipeline_run_id or uuid.uuid4().hex, sft_dir=sft,
                 reward_dir=reward, raw_dir=raw)
    typer.echo((out / "metrics.md").read_text())


@app.command("gate-and-register")
@friendly
def gate_and_register(config: Optional[Path] = ConfigOpt,
                      evaluation: Optional[Path] = typer.Option(None, help="The evaluate folder [work_dir/stages/eval]."),
                      model: Optional[Path] = typer.Option(None, help="The evaluated model's folder [work_dir/stages/aligned]."),
                      sids: Optional[Path] = typer.Option(None, help="The assign-sids folder [work_dir/stages/sids]."),
                      out: Optional[Path] = typer.Option(None, help="Output folder [work_dir/stages/gate]."),
                      pipeline_run_id: str = RunIdOpt, overrides: Optional[List[str]] = OverridesArg):
    """Applies the gate (config: gate.*) to the evaluation metrics and the champion's; registers the model in the MLflow
    registry (alias challenger; champion when it beats the champion; rejected versions get no alias); writes
    decision.md / .html / .json to OUT. Exit 0 either way: the decision is the output."""
    from genrec.stages.gate_and_register import run_gate_and_register

    cfg = resolve_config(config, overrides)
    out = _out(cfg, out, "gate")
    run_gate_and_register(cfg, evaluation or _out(cfg, None, "eval"), model or _out(cfg, None, "aligned"),
                          sids or _out(cfg, None, "sids"), out, pipeline_run_id or uuid.uuid4().hex)
    typer.echo((out / "decision.md").read_text())


@app.command()
@friendly
def ui(config: Optional[Path] = ConfigOpt, port: int = typer.Option(5000, help="Port on 127.0.0.1."),
       overrides: Optional[List[str]] = OverridesArg):
    """Starts a local MLflow server on 127.0.0.1 over the work folder's sqlite store and prints its URL (Ctrl-C stops
    it). A team's server (PostgreSQL, object store, logins): `make mlflow-up` (mlflow/README.md)."""
    from genrec import tracking

    cfg = resolve_config(config, overrides)
    uri = tracking.tracking_uri(cfg)
    if tracking.is_server(uri):
        raise GenrecError(f"the tracking store is already a server ({uri}): open it in a browser; `genrec ui` serves "
                          "the work folder's sqlite store (unset MLFLOW_TRACKING_URI)")
    art = Path(cfg.run.work_dir) / "mlartifacts"
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", uri, "--default-artifact-root", art.as_uri()]
    typer.echo(f"MLflow UI: http://127.0.0.1:{port}  (store {uri}; Ctrl-C to stop)")
    sys.stdout.flush()
    # Become the server: Ctrl-C and SIGTERM reach it directly, and no orphan is left behind.
    os.execv(sys.executable, cmd)


@app.command("config-show")
@friendly
def config_show(config: Optional[Path] = ConfigOpt, as_json: bool = typer.Option(False, "--json", help="JSON instead of YAML."),
                overrides: Optional[List[str]] = OverridesArg):
    """Prints the fully resolved config (file + overrides + defaults)."""
    cfg = load_config(config, overrides or [])
    typer.echo(cfg.to_json() if as_json else cfg.to_yaml())


@app.command("config-help")
def config_help():
    """Lists every config key with its default and help text."""
    for key, default, help_text in describe_fields():
        typer.echo(f"{key} = {default}\n    {help_text}")


if __name__ == "__main__":
    app()
