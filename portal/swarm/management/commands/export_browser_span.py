"""``manage.py export_browser_span --model smollm2 --blocks 10:20``: make a span servable by browser nodes."""

from django.core.management.base import BaseCommand, CommandError

from portal.swarm.browser_node import SpanFileError, export_span_file


class Command(BaseCommand):
    help = "Export a span of a model to ONNX once (content-addressed by SHA-256) so browsers can serve it."

    def add_arguments(self, parser):
        parser.add_argument("--model", default="smollm2")
        parser.add_argument("--blocks", action="append", required=True, help="START:END (repeatable)")

    def handle(self, *args, model: str, blocks: list[str], **options):
        for spec in blocks:
            try:
                start, end = (int(x) for x in spec.split(":"))
            except ValueError:
                raise CommandError(f"--blocks takes START:END, not {spec!r}") from None
            try:
                record = export_span_file(model, start, end, progress=lambda line: self.stdout.write(f"  {line}"))
            except SpanFileError as exc:
                raise CommandError(str(exc)) from None
            self.stdout.write(f"{model} {start}:{end} -> {record.sha256} ({record.size} bytes)")
