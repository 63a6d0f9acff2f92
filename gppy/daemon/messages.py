"""The texts the daemon posts (Slack mrkdwn), as pure functions of what it knows:
a night detected, processing started, done, failed."""

from __future__ import annotations

from pathlib import Path

from gppy.daemon.slack import escape

MAX_LISTED = 10  # files named in one message; the rest are counted


# what goes wrong in a night, listed file by file under these titles
LISTED = (("masters_failed", "Masters that could not be built:"),
          ("failed", "Frames that failed:"),
          ("unsolved", "Frames without astrometry:"),
          ("phot_failed", "Frames without photometry:"),
          ("skipped", "Files skipped:"))


def _listed(items: dict[str, str]) -> list[str]:
    lines = [f"  • {escape(Path(f).name)}: {escape(str(why))}"
             for f, why in sorted(items.items())[:MAX_LISTED]]
    if len(items) > MAX_LISTED:
        lines.append(f"  • … and {len(items) - MAX_LISTED} more")
    return lines


def detected(obs: str, night: str, path: Path, n_files: int) -> str:
    return (f":telescope: *{obs}* night {night}: new data in `{escape(str(path))}` "
            f"({n_files} files so far); processing once the folder settles.")


def started(obs: str, night: str, event: dict) -> str:
    frames = event["frames"]
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(frames.items()))
    objects = ", ".join(escape(o) for o in event["objects"]) or "none"
    filters = ", ".join(escape(f) for f in event["filters"]) or "none"
    return (f":gear: *{obs}* night {night}: processing {sum(frames.values())} frames ({kinds}) "
            f"on {event['ncores']} cores; objects {objects}; filters {filters}.")


def done(obs: str, night: str, event: dict) -> str:
    lines = [f":white_check_mark: *{obs}* night {night} done in {event['seconds']:.0f} s: "
             f"{event['calibrated']} frames calibrated"
             + (f" ({event['unchanged']} unchanged)" if event["unchanged"] else "")
             + f", {len(event['failed'])} failed, {len(event['skipped'])} skipped."]
    if event["solved"] or event["unsolved"]:
        rms = event["astrometry_rms_arcsec"]
        lines.append(f"Astrometry: {event['solved']} solved"
                     + (f" (median RMS {rms:.2f}\")" if rms is not None else "")
                     + f", {len(event['unsolved'])} unsolved"
                     + (f", {len(event['excluded_from_stacks'])} left out of stacks"
                        if event["excluded_from_stacks"] else "") + ".")
    if event["zp_measured"] or event["phot_failed"]:
        seeing, ul5 = event["seeing_arcsec"], event["ul5"]
        lines.append(f"Photometry: {event['zp_measured']} frames with zero points"
                     + (f", median seeing {seeing:.2f}\"" if seeing is not None else "")
                     + (f", median 5-sigma depth {ul5:.2f} mag" if ul5 is not None else "")
                     + f", {len(event['phot_failed'])} failed.")
    if event["stacks"] or event["transient_failed"]:
        lines.append(f"Transients: {event['stacks']} stacks/differences, "
                     f"{event['n_candidates']} candidates"
                     + (f", {len(event['transient_failed'])} groups failed"
                        if event["transient_failed"] else "") + ".")
        for c in event["top_candidates"]:
            mag = f"{c['mag']:.2f}" if c["mag"] is not None else "?"
            lines.append(f"  {escape(c['group'])}: RA {c['ra']:.5f} Dec {c['dec']:+.5f}, "
                         f"mag {mag}, S/N {c['snr']:.0f}, score {c['score']:.2f}")
    for kind, nights in sorted(event["borrowed"].items()):
        lines.append(f"Borrowed the {kind} from night {', '.join(nights)}.")
    for why, n in sorted(event["uncalibrated"].items()):
        lines.append(f"{n} frames not calibrated: {escape(why)}.")
    for key, title in LISTED:
        if event[key]:
            lines.append(title)
            lines += _listed(event[key])
    lines.append(f"Products: `{escape(event['products'])}`")
    return "\n".join(lines)


def failed(obs: str, night: str, error: str, log: Path, attempts: int) -> str:
    """Posted once, when the retries are used up."""
    return (f":x: *{obs}* night {night} failed after {attempts} attempts: {escape(error)}\n"
            f"It is retried when new files arrive, or reprocess it with `gppy process`.\n"
            f"Log: `{escape(str(log))}`")
