"""The serving commands: `mvalign view` (the front explorer page, optionally served) and `mvalign serve` (the
OpenAI-compatible server where each request picks its trade-off, `mvalign.serve`)."""

from __future__ import annotations

from pathlib import Path

import typer


def view(
    runs: list[Path] = typer.Argument(..., help="Run directories with evaluated fronts (several: one page, a run selector)."),
    out: Path | None = typer.Option(None, "--out", help="Page path [default: RUN/explorer.html for one run, "
                                    "./explorer.html for several]."),
    serve: bool = typer.Option(False, "--serve", help="Then serve it on http://127.0.0.1:PORT until Ctrl-C."),
    port: int = typer.Option(8765, "--port", help="Port for --serve (127.0.0.1 only)."),
) -> None:
    """Write the front explorer: one self-contained HTML page (works from file://, no network) with every evaluated
    point, each method's front, the paired change from the base model and each point's responses."""
    from .explorer import serve as serve_page
    from .explorer import write_explorer
    from .rundir import RunDir

    path = write_explorer([RunDir(r) for r in runs], out)
    typer.echo(f"wrote {path}")
    if serve:
        server = serve_page(path, port, [RunDir(r) for r in runs])
        typer.echo(f"serving http://127.0.0.1:{server.server_address[1]}/{path.name} (Ctrl-C to stop)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()


def serve(
    run: Path = typer.Argument(..., help="Run directory with the method's trained value vectors."),
    method: str = typer.Option("mva", "--method", help="Whose value vectors to serve (a value-vectors method)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; beyond this machine needs --api-key."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="Port to bind."),
    api_key: str | None = typer.Option(None, "--api-key", envvar="MVALIGN_API_KEY",
                                       help="Require 'Authorization: Bearer KEY' (env MVALIGN_API_KEY)."),
    rows_per_pass: int = typer.Option(16, "--rows-per-pass", min=1, help="Requests decoded together per forward pass."),
    max_waiting: int = typer.Option(64, "--max-waiting", min=1, help="Queue limit: more waiting requests get 429."),
    max_tokens: int = typer.Option(512, "--max-tokens", min=1, help="Largest max_tokens a request may ask for."),
    max_weight: float | None = typer.Option(None, "--max-weight", min=0.0, help="Largest |ω| a request may use "
                                            "[default: the largest |ω| of the run's sweep grid, at least 1]."),
) -> None:
    """Serve the OpenAI API (chat and completions, streamed or not) with every request at its own trade-off ω:
    extra body field {"mvalign": {"weights": {...}}} or {"preset": NAME}, or a model id (a preset name, or
    omega:helpful=1.2,harmless=0.8). Concurrent requests share forward passes."""
    from .serve import check_host, load_server
    from .serve_api import create_app

    check_host(host, api_key)
    try:
        import uvicorn
    except ImportError:
        from .config import ConfigError

        raise ConfigError("mvalign serve needs FastAPI and uvicorn: pip install 'mvalign[serve]'") from None
    server = load_server(run, method, rows_per_pass, max_waiting, max_weight, max_tokens, api_key)
    typer.echo(f"serving {method} ({', '.join(server.values)}; |ω| <= {server.limits.max_weight}) on "
               f"http://{host}:{port}/v1 — models: {', '.join(server.models())} (Ctrl-C to stop)")
    try:
        uvicorn.run(create_app(server), host=host, port=port, log_level="warning", timeout_keep_alive=5)
    finally:
        server.engine.stop()
