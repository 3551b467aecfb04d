"""Command line: `python -m handlib doctor | run | personalize`."""

import argparse

from handlib import doctor, pipeline


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m handlib")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("doctor", help="versions, device, OpenGL, which model and datasets will be used")
    run = sub.add_parser("run", help="execute the numbered notebooks into runs/<timestamp>/")
    run.add_argument("--profile", default="demo", help="parameter profile under configs/ (quick, demo, full)")
    run.add_argument("--only", nargs="*", help="notebook name prefixes to run, e.g. 00 04")
    run.add_argument("--fresh", action="store_true",
                     help="start a new run folder instead of continuing the newest one of this profile")
    from handlib import personalize
    personalize.add_arguments(sub.add_parser("personalize", help="photos of one person's hand -> their own hand "
                                                                 "model (GLB, OBJ, texture, parameters JSON)"))
    args = parser.parse_args()
    if args.command == "doctor":
        print(doctor.report())
    elif args.command == "run":
        print(doctor.report(), flush=True)
        run_dir = None if args.fresh else pipeline.latest_run_dir(args.profile)
        pipeline.run(args.profile, run_dir=run_dir, only=args.only)
    elif args.command == "personalize":
        personalize.main(args)


if __name__ == "__main__":
    main()
