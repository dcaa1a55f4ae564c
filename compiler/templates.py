"""The template library in `specs/`: listing it (`kspec templates`) and copying a starter (`kspec init`).

    specs/blocks/     block libraries (`model.blocks.include`): conv, residual, transformer, ...
    specs/heads/      block libraries for output heads
    specs/backbones/  pretrained applications wrapped as blocks
    specs/recipes/    partial specs with a `train:` section (`extends`)
    specs/starters/   complete specs that `kspec init` copies

Every template file starts with a comment line saying what it is for (its
summary; a `# yaml-language-server: $schema=...` modeline before it is skipped),
then a usage example in comments.

`init` copies a starter as text, so its comments survive, and rewrites the
paths in it that are relative to the starter (`extends`, `model.blocks.include`,
`data.source.{csv,npz,images}` when that file exists, and the schema modeline)
so that they point at the same files from the new file's folder. No TensorFlow
or Keras here.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import Diagnostic, Loc, SpecError
from .suggest import did_you_mean

SPECS_DIR = Path(__file__).resolve().parents[1] / "specs"
KINDS = ("blocks", "heads", "backbones", "recipes", "starters")
DATA_PATH_KEYS = ("csv", "npz", "images")

_MODELINE = re.compile(r"^(#\s*yaml-language-server:\s*\$schema=)(\S+)(.*)$")
_PLAIN_SAFE = re.compile(r"^[A-Za-z0-9_./~][A-Za-z0-9_./~-]*$")
_NAME = re.compile(r"^[^/\\\x00-\x1f.][^/\\\x00-\x1f]*$")


class TemplateError(SpecError):
    """An unknown or ambiguous template, or an `init` that cannot write its file. Exit 2."""


@dataclass(frozen=True)
class Template:
    kind: str      # blocks, heads, backbones, recipes or starters
    name: str      # the file's stem
    path: Path
    summary: str   # the file's first comment line, without '# '

    @property
    def id(self) -> str:
        """`kind/name`, as `kspec templates` prints it and `find` accepts it."""
        return f"{self.kind}/{self.name}"


def summary_of(path: Path) -> str:
    """The first comment line of a file (a schema modeline skipped), without its '#'."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return ""
    for line in lines:
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("#"):
            return ""
        if _MODELINE.match(stripped):
            continue
        return stripped.lstrip("#").strip()
    return ""


def list_templates(kind: str | None = None, root: Path | None = None) -> list[Template]:
    """Every template file, in kind order (blocks, heads, backbones, recipes, starters), then by name."""
    root = Path(root) if root is not None else SPECS_DIR
    if kind is not None and kind not in KINDS:
        raise TemplateError(Diagnostic(f"unknown template kind '{kind}' (kinds: {', '.join(KINDS)})"
                                       + did_you_mean(kind, KINDS)))
    out = []
    for k in (kind,) if kind else KINDS:
        folder = root / k
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.yaml")):
            out.append(Template(k, path.stem, path, summary_of(path)))
    return out


def find(name: str, kind: str | None = None, root: Path | None = None) -> Template:
    """A template by `kind/name` or by plain `name` when that is unique (within `kind`, if given)."""
    wanted = str(name).strip().replace("\\", "/")
    for prefix in ("specs/",):
        if wanted.startswith(prefix):
            wanted = wanted[len(prefix):]
    for suffix in (".yaml", ".yml"):
        if wanted.endswith(suffix):
            wanted = wanted[: -len(suffix)]
    templates = list_templates(root=root)
    if "/" in wanted:
        hits = [t for t in templates if t.id == wanted]
    else:
        hits = [t for t in templates if t.name == wanted]
    in_kind = [t for t in hits if kind is None or t.kind == kind]
    if len(in_kind) == 1:
        return in_kind[0]
    if len(in_kind) > 1:
        raise TemplateError(Diagnostic(
            f"'{name}' names several templates: {', '.join(t.id for t in in_kind)}",
            hint="write it as kind/name"))
    if hits:   # it exists, but not of the kind asked for
        raise TemplateError(Diagnostic(
            f"'{hits[0].id}' is not one of the {kind}",
            hint=f"the {kind} are: {', '.join(t.name for t in templates if t.kind == kind)}"))
    pool = [t for t in templates if kind is None or t.kind == kind]
    candidates = [t.id for t in pool] if "/" in wanted else sorted({t.name for t in pool})
    raise TemplateError(Diagnostic(
        f"unknown template '{name}'" + did_you_mean(wanted, candidates),
        hint="`kspec templates` lists them" + (f" (`--kind {kind}`)" if kind else "")))


# -- kspec init ---------------------------------------------------------------------------

def init(name: str, destination: str | Path | None, template: str, root: Path | None = None) -> Path:
    """Write the starter `template` to `destination` (default `NAME.yaml`) with `name: NAME`.

    Paths in the starter are rewritten to be relative to the destination's folder.
    Refuses to overwrite an existing file; creates missing parent folders.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise TemplateError(Diagnostic(
            f"'{name}' cannot be a spec name: no path separators, control characters or leading '.'",
            hint="a name such as my-model (it also names the run folder runs/NAME/)"))
    starter = find(template, kind="starters", root=root)
    dest = Path(destination) if destination is not None else Path(f"{name}.yaml")
    if dest.is_dir() or str(destination).endswith(("/", os.sep)):   # a folder: NAME.yaml in it
        dest = dest / f"{name}.yaml"
    if dest.exists() or dest.is_symlink():
        raise TemplateError(Diagnostic(f"{dest} already exists; not overwriting it",
                                       hint="pick another path with -o, or remove the file first"))
    text = render(starter.path, name, dest.resolve().parent)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(dest, "x", encoding="utf-8") as f:   # 'x': never clobber a file created meanwhile
            f.write(text)
    except FileExistsError:
        raise TemplateError(Diagnostic(f"{dest} already exists; not overwriting it")) from None
    return dest


def render(source: Path, name: str, dest_dir: Path) -> str:
    """The text of `source` with `name:` set and its relative paths rebased onto `dest_dir`."""
    from .spec.load import load_file, load_text
    from .spec.tree import Map, Seq

    text = source.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    tree = load_file(source)
    base = source.resolve().parent
    edits: list[tuple[Loc, str, str]] = []   # (where, old value, new value)

    def rebase(value: str, must_exist: bool) -> str | None:
        if not isinstance(value, str) or not value or os.path.isabs(value):
            return None
        target = base / value
        if must_exist and not target.exists():
            return None   # a placeholder meant relative to the user's spec (`photos/`): leave it
        target = Path(os.path.normpath(target))
        try:
            shared = os.path.commonpath([target, dest_dir])
            new = Path(os.path.relpath(target, dest_dir)).as_posix()
        except ValueError:   # another drive (Windows)
            shared, new = "", target.as_posix()
        if Path(shared) == Path(shared).parent:   # nothing in common but the root: absolute reads better
            new = target.as_posix()
        if value.endswith("/") and not new.endswith("/"):
            new += "/"
        return new

    def paths(parent, key, must_exist: bool) -> None:
        if not isinstance(parent, Map) or key not in parent:
            return
        value = parent[key]
        items = [(value[i], value.item_loc(i)) for i in range(len(value))] if isinstance(value, Seq) \
            else [(value, parent.value_loc(key))]
        for item, loc in items:
            new = rebase(item, must_exist)
            if new is not None and new != item:
                assert loc is not None, "a tree loaded from a file locates every value"
                edits.append((loc, item, new))

    paths(tree, "extends", must_exist=False)
    model = tree.get("model")
    paths(model.get("blocks") if isinstance(model, Map) else None, "include", must_exist=False)
    data = tree.get("data")
    source_map = data.get("source") if isinstance(data, Map) else None
    for key in DATA_PATH_KEYS:
        paths(source_map, key, must_exist=True)

    if "name" in tree:
        edits.append((tree.value_loc("name"), tree["name"], name))
    else:   # a `name:` line right after `kspec: N`
        line = tree.key_loc("kspec").line
        lines.insert(line, f"name: {_yaml_scalar(name)}\n")
        edits = [(Loc(loc.file, loc.line + (loc.line > line), loc.col), old, new) for loc, old, new in edits]

    for loc, old, new in sorted(edits, key=lambda e: (e[0].line, e[0].col), reverse=True):
        lines[loc.line - 1] = _replace_scalar(lines[loc.line - 1], loc.col - 1, str(old), new, source)

    for i, line in enumerate(lines):   # the editor's schema modeline, a comment
        match = _MODELINE.match(line.rstrip("\n"))
        if match:
            rebased = rebase(match.group(2), must_exist=True)
            if rebased is not None:
                lines[i] = f"{match.group(1)}{rebased}{match.group(3)}\n"

    out = "".join(lines)
    check = load_text(out, str(source))   # the edits kept it YAML, with the values meant
    if check.get("name") != name:
        raise AssertionError(f"kspec init could not set the name in {source}")
    return out


def _yaml_scalar(value: str) -> str:
    """`value` as a YAML scalar: plain when that reads back as the same string, else double-quoted."""
    from .spec.load import resolve_plain

    if _PLAIN_SAFE.match(value) and resolve_plain(value) == value:
        return value
    return json.dumps(value)   # a JSON string is a YAML double-quoted scalar


def _replace_scalar(line: str, start: int, old: str, new: str, source: Path) -> str:
    """Replace the scalar `old` written at `line[start:]` by `new`."""
    quote = line[start:start + 1]
    if quote in ("'", '"'):
        end = start + 1
        while end < len(line):
            if quote == '"' and line[end] == "\\":
                end += 2
                continue
            if line[end] == quote:
                if quote == "'" and line[end + 1:end + 2] == "'":
                    end += 2
                    continue
                break
            end += 1
        end += 1
    elif line.startswith(old, start):
        end = start + len(old)
    else:
        raise AssertionError(f"kspec init cannot rewrite '{old}' in {source}: write it on one line")
    if quote == "'" and "'" not in new and "\\" not in new:
        written = f"'{new}'"                 # keep the file's quoting style
    elif quote == '"':
        written = json.dumps(new)
    else:
        written = _yaml_scalar(new)
    return line[:start] + written + line[end:]
