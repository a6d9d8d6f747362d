"""What a tuning run writes and says: the JSON record, the Markdown report, the plot, and stdout.

Everything here reads the record ``bench.tune.run.tune`` returns (plain JSON types), so a
record read back from a file is reported the same way. A partial record (an interrupted run,
``bench.tune.run.partial_record``) has no pick: it gets its own Markdown and stdout lines, no plot
and no recommendation.json, under a name that ends in ``-partial``.
"""
from __future__ import annotations

import io
import shlex
from pathlib import Path

from bench.tune.forecast import workers_phrase


def run_tag(record: dict) -> str:
    """The run's conditions, for file names; a partial run's names end in -partial, so that it does
    not write over the complete report of an earlier run."""
    data = Path(record["dataset"]["root"]).name or "data"
    run = record["search"]["mode"] + ("-partial" if record.get("partial") else "")
    return f"tune-{data}-{record['model']}-{record['device'].replace(':', '')}-{record['machine']['cores']}c-{run}"


def plot_png(record: dict) -> bytes:
    """Left: img/s against workers per pipeline. Right: feed and consume per shape, the pick marked."""
    from matplotlib.figure import Figure

    feed = [m for m in record["search"]["measurements"] if m["side"] == "feed"]
    ref_size, ref_batch = feed[0]["size"], feed[0]["batch"]
    climbs: dict[str, list[tuple[int, float]]] = {}  # by pipeline: (workers, img/s) at the climb's shape and batch
    for m in feed:
        points = climbs.setdefault(m["pipeline"], [])
        if m["size"] == ref_size and m["batch"] == ref_batch:
            points.append((m["workers"], m["images_per_sec"]))
    figure = Figure(figsize=(11, 4.2))
    left, right = figure.subplots(1, 2)
    for name, points in climbs.items():
        left.plot(*zip(*sorted(points)), marker="o", label=name)
    left.set(xlabel="workers (DALI: threads)", ylabel="feed img/s",
             title=f"feed at {ref_size[0]}x{ref_size[1]}, batch {ref_batch}")
    left.legend()
    rows = sorted(record["shape_profile"]["rows"], key=lambda r: r["size"][0])
    sides = [r["size"][0] for r in rows]
    right.plot(sides, [r["feed_ips"] for r in rows], marker="o",
               label=f"feed ({record['pipeline']}, {record['workers']} workers)")
    right.plot(sides, [r["consume_ips"] for r in rows], marker="s",
               label=f"consume ({record['model']}, {record['device']})")
    right.scatter([record["size"][0]], [record["predicted_ips"]], s=160, marker="*", color="red", zorder=5,
                  label=f"pick: {record['predicted_ips']:.0f} predicted, {record['measured_ips']:.0f} measured")
    right.set(xlabel="image side (px)", ylabel="img/s", title="feed against consumption", yscale="log")
    right.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def recommendation_markdown(record: dict, command: str, next_step: str | None = None) -> str:
    """The Markdown report; ``next_step``: the training command that uses the recommendation written."""
    lines = [
        *_header_lines(record, command),
        "",
        "## Recommendation",
        "",
        *_recommendation_lines(record, next_step),
        "",
        "## Pipelines not picked",
        "",
        *([f"- {line}" for line in dropped_lines(record)] or ["- none: only the pick's pipeline was tried"]),
        *skipped_lines(record, heading=True),
        "",
        *checked_table(record),
        "",
        *_ranked_table(record["search"]),
        "",
        *_shape_table(record),
        *ray_scale_lines(record.get("ray_scale")),
    ]
    if record.get("exhaustive_check"):
        lines += ["", "## Against the exhaustive grid", "",
                  *[f"- {line}" for line in grid_check_lines(record["exhaustive_check"])]]
    lines += ["", f"![feed and consumption]({run_tag(record)}.png)", ""]
    return "\n".join(lines)


def _header_lines(record: dict, command: str, title_end: str = "") -> list[str]:
    """The title, the command, the machine and the commit."""
    m = record["machine"]
    return [
        f"# feedbench tune: {record['model']} on {record['device']}{title_end}",
        "",
        f"Command: `{command}`  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB, GPU {m['gpu']}; torch {m['torch']}, "
        f"{m['dali']}, PIL {m['pil']['distribution']} {m['pil']['version']}  ",
        f"Commit: {record['commit']['id']} (dirty: {record['commit']['dirty']}), {record['created']}",
    ]


PARTIAL_NO_RECOMMENDATION = ("no recommendation: recommendation.json is not written (one already in the folder "
                             "is an earlier run's, left as it was), and `training.fit --pipeline best` refuses "
                             "this partial record")


def partial_markdown(record: dict, command: str) -> str:
    """The Markdown report of an interrupted run: where it stopped, and the measurements it kept."""
    search, tuner = record["search"], record.get("tuner_search")
    lines = [
        *_header_lines(record, command, " (partial: interrupted)"),
        "",
        "## Interrupted",
        "",
        f"- {record['interrupted']['note']}",
        f"- {PARTIAL_NO_RECOMMENDATION}",
        *([f"- spec: {record['spec_file']}"] if record.get("spec_file") else []),
        *(["", *_ranked_table(search)] if search["ranked"] else []),
        *(["", *checked_table(record)] if record["checked"] else []),
        *(["", *_shape_table(record)] if record["shape_profile"]["rows"] else []),
        "",
        *measurements_table(search["measurements"]),
        *skipped_lines(record, heading=True),
    ]
    if tuner is not None:  # the exhaustive check had begun the tuner's own search
        lines += ["", *measurements_table(tuner["measurements"], "The tuner's search for the exhaustive check")]
    return "\n".join([*lines, ""])


def measurements_table(measurements: list[dict], title: str = "Measurements") -> list[str]:
    """Every feed and model-side point in the order measured (img/s; the largest batch that fits has none)."""
    lines = [f"## {title} ({len(measurements)})", "",
             "| side | pipeline | workers | batch | size | img/s |", "|---|---|---:|---:|---|---:|"]
    for m in measurements:
        rate = f"{m['images_per_sec']:.1f}" if "images_per_sec" in m else ""
        lines.append(f"| {m['side']} | {m.get('pipeline', '')} | {m.get('workers', '')} | {m['batch']} | "
                     f"{m['size'][0]}x{m['size'][1]} | {rate} |")
    return lines


def spec_line(record: dict) -> str | None:
    """'the shape 64x64 is fixed by the spec spec.yaml (its train section: ...)'; None without a spec file."""
    if not record.get("shape_fixed_by_spec"):
        return None
    from feeding.spec_file import describe_spec, spec_from_record

    train = describe_spec(spec_from_record(record["spec"]["train"], "the record's spec"))
    return (f"the shape {record['size'][0]}x{record['size'][1]} is fixed by the spec {record['spec_file']} "
            f"(not searched); every feed ran its train section: {train}")


def _recommendation_lines(record: dict, next_step: str | None) -> list[str]:
    end_to_end = record["end_to_end"]
    spec = spec_line(record)
    return [
        f"- pipeline **{record['pipeline']}**, workers **{record['workers']}**, batch **{record['batch']}**, "
        f"size **{record['size'][0]}x{record['size'][1]}**"
        + (f", model threads {record['model_threads']}" if record["model_threads"] else ""),
        *([f"- {spec}"] if spec else []),
        f"- feed {record['feed_ips']:.1f} img/s, consume {record['consume_ips']:.1f} img/s, "
        f"predicted {record['predicted_ips']:.1f} img/s"
        + (f" per rank; {record['ranks']} ranks sharing {record['machine']['cores']} cores: "
           f"{record['job_predicted_ips']:.1f} img/s for the job" if record.get("ranks", 1) > 1 else ""),
        f"- end to end (real feeder + real training step, {end_to_end['batches']} batches): "
        f"**{record['measured_ips']:.1f} img/s**, data wait {100 * record['data_wait_fraction']:.1f}% "
        f"({100 * record['prediction_error']:+.1f}% against the prediction)",
        f"- stages (img/s each could take alone): {stage_phrase(record)}; feed ceiling of this host "
        f"{record['feed_ceiling_ips']:.1f} img/s (the most any measured loader delivered to the device)",
        f"- bottleneck: {record['bottleneck']}",
        f"- step: {step_phrase(record['step'])}",
        f"- {record['verdict']}",
        *([f"- next: `{next_step}`"] if next_step else []),
        *[f"- note: {note}" for note in end_to_end.get("notes", ())],
    ]


def stage_phrase(record: dict) -> str:
    """'input 837, host 23601, model 990, cores 851' (img/s)."""
    return ", ".join(f"{name} {ips:.0f}" for name, ips in record["stages"].items())


def step_phrase(step: dict) -> str:
    """'adamw, bf16, channels_last, cudnn.benchmark, accumulation 1, loss read every 1 batch(es)'."""
    flags = [name for name, on in (("bf16", step["amp"]), ("channels_last", step["channels_last"]),
                                   ("cudnn.benchmark", step["cudnn_benchmark"])) if on]
    return ", ".join([step["optimizer"], *(flags or ["fp32"]), f"accumulation {step['accum_steps']}",
                      f"loss read every {step['loss_every']} batch(es)"])


def checked_table(record: dict) -> list[str]:
    """The setups checked end to end with the real loop: predicted against measured."""
    lines = ["## Checked end to end (the real training loop; the pick is the fastest measured)", "",
             "| pipeline | workers | batch | size | predicted img/s | measured img/s | error | bound by |",
             "|---|---:|---:|---|---:|---:|---:|---|"]
    for r in record["checked"]:
        error = r["measured_ips"] / r["predicted_ips"] - 1
        lines.append(f"| {r['pipeline']} | {r['workers']} | {r['batch']} | {r['size'][0]}x{r['size'][1]} | "
                     f"{r['predicted_ips']:.1f} | {r['measured_ips']:.1f} | {100 * error:+.1f}% | {r['bottleneck']} |")
    return lines


def _ranked_table(search: dict, shown: int = 25) -> list[str]:
    """The search's (a record's ``search``) first ``shown`` predictions, best first."""
    stopped = f"; stopped early: {search['interrupted']}" if search["interrupted"] else ""
    lines = [f"## Candidates ({search['mode']} search, {search['seconds']:.0f} s, "
             f"{len(search['measurements'])} measurements{stopped})",
             "",
             "| pipeline | workers | batch | size | feed img/s | consume img/s | predicted img/s | bound by |",
             "|---|---:|---:|---|---:|---:|---:|---|"]
    for r in search["ranked"][:shown]:
        lines.append(f"| {r['pipeline']} | {r['workers']} | {r['batch']} | {r['size'][0]}x{r['size'][1]} | "
                     f"{r['feed_ips']:.1f} | {r['consume_ips']:.1f} | {r['predicted_ips']:.1f} | {r['bottleneck']} |")
    return lines


def _shape_table(record: dict) -> list[str]:
    """The pick's setup at every shape the user listed."""
    profile = record["shape_profile"]
    lines = [f"## The pick at every shape (measured after the search, {profile['seconds']:.0f} s)", "",
             "| size | feed img/s | consume img/s | predicted img/s | bound by |", "|---|---:|---:|---:|---|"]
    for r in profile["rows"]:
        lines.append(f"| {r['size'][0]}x{r['size'][1]} | {r['feed_ips']:.1f} | {r['consume_ips']:.1f} | "
                     f"{r['predicted_ips']:.1f} | {r['bottleneck']} |")
    return lines


def dropped_lines(record: dict) -> list[str]:
    """'dali: pruned during the climb: ...', one per pipeline that lost (Markdown and stdout)."""
    return [f"{d['pipeline']}: {d['reason']}" for d in record["search"]["dropped"]]


def skipped_lines(record: dict, heading: bool = False, limit: int = 20) -> list[str]:
    """The files the feeders left out (``--on-bad skip``), the first ``limit`` of them; [] when none."""
    skipped = record["skipped"]
    if not skipped:
        return []
    title = f"{len(skipped)} file(s) or listing row(s) left out (--on-bad {record['on_bad']})"
    shown = [f"{s['path']}: {s['reason']}" for s in skipped[:limit]]
    more = [f"... and {len(skipped) - limit} more (all in the JSON's skipped)"] if len(skipped) > limit else []
    if heading:
        return ["", "## Files left out", "", f"{title}:", "", *[f"- {line}" for line in shown + more]]
    return [f"skipped: {title}", *[f"skipped: {line}" for line in shown + more]]


def grid_check_lines(check: dict) -> list[str]:
    """The exhaustive check in words, the two picks named as in the JSON (Markdown and stdout)."""
    def describe(pick: dict) -> str:
        size = pick["size"]
        return (f"{pick['pipeline']}, {workers_phrase(pick['pipeline'], pick['workers'])}, batch {pick['batch']}, "
                f"{size[0]}x{size[1]}: predicted {pick['predicted_ips']:.1f} img/s")

    tuner, best = check["tuner_pick"], check["grid_best"]
    outcome = ("they agree" if check["agree"] else
               f"they differ: the tuner's pick reaches {100 * check['ratio']:.1f}% of the grid's best")
    return [f"tuner_pick (the climb search, {check['tuner_search_s']:.0f} s): {describe(tuner)} "
            f"(rated by {tuner['rated_by']})",
            f"grid_best ({check['grid_search_s']:.0f} s; {best['criterion']}): {describe(best)}",
            f"{outcome}, in {100 * check['time_ratio']:.0f}% of the grid's time",
            check["headline"]]


def ray_scale_lines(report: dict | None) -> list[str]:
    """The Ray CPU nodes section of the Markdown report ([] where ray was not measured)."""
    if report is None:
        return []
    if "error" in report:
        return ["", "## Ray CPU nodes", "", f"Not computed: {report['error']}"]
    return ["", "## Ray CPU nodes", "",
            f"The ray pipeline fed {report['feed_img_s']:.1f} img/s with {report['actors_measured']} actor(s) at "
            f"{report['size'][0]}x{report['size'][1]}, batch {report['batch']}; a typical CPU node of this cluster "
            f"({report['node_cpus']:g} CPUs, one actor each) would feed {report['feed_per_node_img_s']:.1f} img/s, "
            "assuming the feed grows linearly with actors and nodes.",
            f"**{report['nodes']} CPU node(s)** lift the feed above consumption: {report['sentence']}."]


def recommendation_path(record: dict, out: Path) -> Path | None:
    """Where the recommendation that `training.fit --pipeline best` reads is written; None for
    ``--exhaustive``, whose run checks the tuner rather than recommends, and for a partial run,
    which has no pick."""
    complete_climb = record["search"]["mode"] == "climb" and not record.get("partial")
    return out / "recommendation.json" if complete_climb else None


def next_command(recommendation: Path, spec_file: str | None = None) -> str:
    """The training command that uses the recommendation (with the spec file the feeds ran, if any)."""
    spec = f" --spec {shlex.quote(spec_file)}" if spec_file else ""
    return f"python -m training.fit --pipeline best --recommendation {shlex.quote(str(recommendation))}{spec}"


def write_reports(record: dict, out: Path, command: str) -> list[Path]:
    """The record's JSON, Markdown and plot under ``out`` (and recommendation.json), each written atomically;
    for a partial record, its JSON and Markdown alone."""
    from feeding.io import write_atomic, write_json

    tag = run_tag(record)
    if record.get("partial"):  # the JSON first: a report that exists has its record
        return [write_json(out / f"{tag}.json", record),
                write_atomic(out / f"{tag}.md", partial_markdown(record, command).encode())]
    recommendation = recommendation_path(record, out)
    next_step = next_command(recommendation, record.get("spec_file")) if recommendation else None
    written = [write_json(out / f"{tag}.json", record),
               write_atomic(out / f"{tag}.md", recommendation_markdown(record, command, next_step).encode()),
               write_atomic(out / f"{tag}.png", plot_png(record))]
    if recommendation:
        written.append(write_json(recommendation, record))
    return written


def summary_lines(record: dict, recommendation: Path | None) -> list[str]:
    """What stdout says after the run: the pick, the verdict, what lost and why, what was left out,
    and the command that trains with the pick (for a partial record: ``partial_summary_lines``)."""
    if record.get("partial"):
        return partial_summary_lines(record)
    lines = [f"recommendation: {record['pipeline']}, {workers_phrase(record['pipeline'], record['workers'])}, "
             f"batch {record['batch']}, "
             f"{record['size'][0]}x{record['size'][1]}: predicted {record['predicted_ips']:.1f} img/s, "
             f"measured {record['measured_ips']:.1f} img/s ({100 * record['prediction_error']:+.1f}%), "
             f"data wait {100 * record['data_wait_fraction']:.0f}%",
             record["verdict"]]
    spec = spec_line(record)
    lines += [f"spec: {spec}"] if spec else []
    lines += [f"not picked: {line}" for line in dropped_lines(record)]
    lines += [f"note: {note}" for note in record["end_to_end"].get("notes", ())]
    lines += skipped_lines(record, limit=5)
    if record.get("exhaustive_check"):
        lines += [f"exhaustive check: {line}" for line in grid_check_lines(record["exhaustive_check"])]
    ray_scale = record.get("ray_scale") or {}
    if "nodes" in ray_scale:
        lines.append(f"Ray: {ray_scale['sentence']}")
    if recommendation:
        lines.append(f"next: {next_command(recommendation, record.get('spec_file'))}")
    else:
        lines.append("next: --exhaustive writes no recommendation.json; run without it to get one for "
                     "`python -m training.fit --pipeline best`")
    return lines


def partial_summary_lines(record: dict) -> list[str]:
    """What stdout says after an interrupted run: where it stopped, the best setup predicted so far
    (not checked: no pick), and that nothing is recommended."""
    lines = [f"partial: {record['interrupted']['note']}"]
    if record["search"]["ranked"]:
        best = record["search"]["ranked"][0]
        lines.append(f"best predicted so far: {best['pipeline']}, {workers_phrase(best['pipeline'], best['workers'])}, "
                     f"batch {best['batch']}, {best['size'][0]}x{best['size'][1]}: predicted "
                     f"{best['predicted_ips']:.1f} img/s (a forecast, not a recommendation: the run did not finish)")
    lines += skipped_lines(record, limit=5)
    return [*lines, PARTIAL_NO_RECOMMENDATION]
