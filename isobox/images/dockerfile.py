"""``isobox build``: the Dockerfile instructions users rely on, each RUN in an isobox container.

Supported: FROM (one stage; ``scratch`` too), RUN, COPY, ADD (local files; local tar archives
are unpacked), ENV, WORKDIR, USER, CMD, ENTRYPOINT, LABEL, EXPOSE, ARG.  Anything else stops the
build before it starts with an error naming the instruction and its line.

How a step becomes a layer:

- RUN runs ``/bin/sh -c CMD`` (or the exec form) in a container made by the engine from the
  image so far, with the build's ENV, ARG values, WORKDIR and USER and no network; the
  container's overlayfs upper directory then becomes the layer (``layers.pack`` turns
  overlayfs whiteouts back into OCI ones).  The mount points the runtime itself adds
  (empty /etc/hosts, /etc/resolv.conf, /dev, /proc, /sys) are left out.
- COPY/ADD copy from the context (never outside it: paths resolved and checked) into a fresh
  tree, which becomes the layer.  WORKDIR makes the directory when the image lacks it.
- Every layer step commits an untagged intermediate image (Docker's classic builder does the
  same); the final image gets the tags.  An interrupted build leaves only complete images.

Layer cache, keyed like Docker's: (parent image id, the config so far, the instruction text,
and for COPY/ADD a digest of the source files' content and metadata).  Entries live in
``<store>/build-cache.json``; a hit whose image was removed is ignored.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import json
import os
import re
import shutil
import stat
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from isobox.errors import InvalidArgument, IsoboxError, NotFound, RuntimeFailure
from isobox.images import layers as layer_tars
from isobox.images.store import Image, ImageConfig, ImageStore, Progress

if TYPE_CHECKING:
    from isobox.engine import Engine

SUPPORTED = ("FROM", "RUN", "COPY", "ADD", "ENV", "WORKDIR", "USER", "CMD", "ENTRYPOINT", "LABEL", "EXPOSE", "ARG")
KNOWN_UNSUPPORTED = ("HEALTHCHECK", "ONBUILD", "STOPSIGNAL", "VOLUME", "SHELL", "MAINTAINER")
RUNTIME_MOUNTPOINTS = ("etc/hosts", "etc/resolv.conf", "etc/hostname", "dev", "proc", "sys")
MAX_DOCKERFILE = 1 << 20
_VAR = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::(?P<op>[-+])(?P<word>[^}]*))?\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    args: str           # the raw text after the keyword
    json_args: list[str] | None = None  # the exec form, when the text is a JSON array


def parse(text: str) -> list[Instruction]:
    """Dockerfile text -> instructions (comments dropped, ``\\`` continuations joined)."""
    result = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continuation are dropped, as Docker does
        if not pending:
            start = number
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        pending += raw
        result.append(_instruction(start, pending.strip()))
        pending = ""
    if pending.strip():
        result.append(_instruction(start, pending.strip()))
    return result


def _instruction(line: int, text: str) -> Instruction:
    keyword, _, args = text.partition(" ")
    keyword = keyword.upper()
    args = args.strip()
    json_args = None
    if args.startswith("["):
        with contextlib.suppress(ValueError):
            value = json.loads(args)
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                json_args = value
    return Instruction(line, keyword, args, json_args)


def check(instructions: list[Instruction]) -> None:
    """Refuse, before anything runs, what isobox does not do."""
    froms = [i for i in instructions if i.keyword == "FROM"]
    if not froms:
        raise InvalidArgument("the Dockerfile has no FROM instruction")
    if len(froms) > 1:
        raise InvalidArgument(f"multi-stage builds are not supported yet (second FROM at line {froms[1].line})")
    seen_from = False
    for ins in instructions:
        if ins.keyword not in SUPPORTED:
            what = "not supported yet" if ins.keyword in KNOWN_UNSUPPORTED else "not a Dockerfile instruction isobox knows"
            raise InvalidArgument(f"Dockerfile line {ins.line}: {ins.keyword} is {what}",
                                  hint=f"isobox build supports: {', '.join(SUPPORTED)}")
        if not seen_from and ins.keyword not in ("FROM", "ARG"):
            raise InvalidArgument(f"Dockerfile line {ins.line}: {ins.keyword} before FROM")
        seen_from = seen_from or ins.keyword == "FROM"
        if ins.keyword in ("COPY", "ADD") and "--from" in ins.args.split("=")[0]:
            raise InvalidArgument(f"Dockerfile line {ins.line}: {ins.keyword} --from is not supported yet")


def substitute(text: str, env: dict[str, str]) -> str:
    """``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR:+alt}``; ``\\$`` stays a dollar."""
    def one(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("plain")
        value = env.get(name, "")
        op = match.group("op")
        if op == "-":
            return value or match.group("word")
        if op == "+":
            return match.group("word") if value else ""
        return value

    parts = text.split("\\$")
    return "$".join(_VAR.sub(one, part) for part in parts)


def split_words(text: str) -> list[str]:
    """Words of ENV/LABEL/ARG arguments, honouring double and single quotes."""
    import shlex

    try:
        return shlex.split(text, posix=True)
    except ValueError as exc:
        raise InvalidArgument(f"cannot parse {text!r}: {exc}") from None


def pairs(ins: Instruction, env: dict[str, str]) -> list[tuple[str, str]]:
    """``K=V K2="v 2"`` or the legacy ``K value with spaces`` (ENV, LABEL)."""
    text = substitute(ins.args, env)
    words = split_words(text)
    if words and "=" not in words[0]:
        if len(words) < 2 and ins.keyword == "ENV":
            raise InvalidArgument(f"Dockerfile line {ins.line}: ENV needs KEY=VALUE")
        key, _, value = text.strip().partition(" ")
        return [(key, " ".join(split_words(value.strip())) if value.strip() else "")]
    out = []
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"Dockerfile line {ins.line}: {ins.keyword} expects KEY=VALUE, got {word!r}")
        out.append((key, value))
    return out


# -- the build ----------------------------------------------------------------------------------


@dataclass
class _State:
    base: Image | None
    config: ImageConfig
    history: list[dict[str, Any]] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)   # ARG values in scope (RUN env, substitution)
    pending_history: list[dict[str, Any]] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        env = dict(self.args)
        for item in self.config.env:
            key, _, value = item.partition("=")
            env[key] = value
        return env


def build(engine: Engine, request: dict[str, Any], progress: Progress) -> Image:
    store: ImageStore = engine.image_store
    context = Path(str(request.get("context") or "")).resolve()
    if not context.is_dir():
        raise InvalidArgument(f"build context {request.get('context')!r} is not a directory")
    dockerfile = Path(str(request.get("dockerfile") or context / "Dockerfile"))
    try:
        if dockerfile.stat().st_size > MAX_DOCKERFILE:
            raise InvalidArgument(f"{dockerfile} is larger than a Dockerfile should be")
        text = dockerfile.read_text()
    except OSError as exc:
        raise InvalidArgument(f"cannot read the Dockerfile {dockerfile}: {exc.strerror}") from None
    tags = [str(t) for t in request.get("tags") or []]
    from isobox.images.store import _tag_name

    tags = [_tag_name(t) for t in tags]
    build_args: dict[str, str] = dict(request.get("build_args") or {})
    instructions = parse(text)
    check(instructions)
    builder = _Builder(engine, store, context, build_args, bool(request.get("no_cache")), progress)
    return builder.run(instructions, tags)


class _Builder:
    def __init__(self, engine: Engine, store: ImageStore, context: Path, build_args: dict[str, str],
                 no_cache: bool, progress: Progress) -> None:
        self.engine = engine
        self.store = store
        self.context = context
        self.build_args = build_args
        self.no_cache = no_cache
        self.progress = progress
        self.cache_path = store.root / "build-cache.json"

    def run(self, instructions: list[Instruction], tags: list[str]) -> Image:
        state = _State(base=None, config=ImageConfig())
        total = len(instructions)
        for n, ins in enumerate(instructions, 1):
            self.progress(f"Step {n}/{total} : {ins.keyword} {ins.args}")
            state = self._step(state, ins)
        final = self._finish(state, tags)
        self.progress(f"Successfully built {final.short_id}" + (f", tagged {', '.join(tags)}" if tags else ""))
        return final

    def _step(self, state: _State, ins: Instruction) -> _State:
        env = state.env()
        k = ins.keyword
        if k == "ARG":
            return self._arg(state, ins)
        if k == "FROM":
            return self._from(state, ins)
        if k == "ENV":
            values = dict(item.partition("=")[::2] for item in state.config.env)
            values.update(pairs(ins, env))
            cfg = replace(state.config, env=tuple(f"{key}={v}" for key, v in values.items()))
            return self._meta(state, ins, cfg)
        if k == "LABEL":
            labels = {**state.config.labels, **dict(pairs(ins, env))}
            return self._meta(state, ins, replace(state.config, labels=labels))
        if k == "EXPOSE":
            ports = list(state.config.ports)
            for word in split_words(substitute(ins.args, env)):
                port = word if "/" in word else word + "/tcp"
                if not re.fullmatch(r"\d{1,5}(?:-\d{1,5})?/(?:tcp|udp|sctp)", port):
                    raise InvalidArgument(f"Dockerfile line {ins.line}: bad port {word!r}")
                if port not in ports:
                    ports.append(port)
            return self._meta(state, ins, replace(state.config, ports=tuple(sorted(ports))))
        if k == "USER":
            return self._meta(state, ins, replace(state.config, user=substitute(ins.args, env).strip()))
        if k in ("CMD", "ENTRYPOINT"):
            argv = ins.json_args if ins.json_args is not None else ["/bin/sh", "-c", ins.args]
            if k == "CMD":
                return self._meta(state, ins, replace(state.config, cmd=tuple(argv)))
            return self._meta(state, ins, replace(state.config, entrypoint=tuple(argv), cmd=()))
        if k == "WORKDIR":
            return self._workdir(state, ins, env)
        if k in ("COPY", "ADD"):
            return self._copy(state, ins, env)
        if k == "RUN":
            return self._run(state, ins, env)
        raise InvalidArgument(f"Dockerfile line {ins.line}: {k} is not supported")  # check() catches these first

    # -- metadata steps ---------------------------------------------------------------------

    def _arg(self, state: _State, ins: Instruction) -> _State:
        for word in split_words(ins.args):
            name, sep, default = word.partition("=")
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise InvalidArgument(f"Dockerfile line {ins.line}: bad ARG name {name!r}")
            value = self.build_args.get(name, default if sep else None)
            if value is not None:
                state.args[name] = substitute(value, state.env()) if name not in self.build_args else value
            else:
                state.args.setdefault(name, "")
        return state

    def _from(self, state: _State, ins: Instruction) -> _State:
        ref = substitute(ins.args.split()[0], state.env()) if ins.args else ""
        if " AS " in f" {ins.args.upper()} ":
            ref = substitute(ins.args.split()[0], state.env())
        if ref == "scratch":
            return _State(base=None, config=ImageConfig(), args=state.args)
        try:
            base = self.store.resolve(ref)
        except NotFound as exc:
            raise NotFound(f"Dockerfile line {ins.line}: FROM {ref}: {exc.message}", hint=exc.hint) from None
        if base.disk:
            raise InvalidArgument(f"Dockerfile line {ins.line}: FROM {ref}: a VM disk image has no layers to build on")
        return _State(base=base, config=base.config, history=list(base.history), args=dict(state.args))

    def _meta(self, state: _State, ins: Instruction, config: ImageConfig) -> _State:
        state.pending_history.append({"created": _now(), "created_by": f"{ins.keyword} {ins.args}",
                                      "empty_layer": True})
        return replace(state, config=config)

    # -- layer steps ------------------------------------------------------------------------

    def _workdir(self, state: _State, ins: Instruction, env: dict[str, str]) -> _State:
        path = substitute(ins.args, env).strip()
        if not path:
            raise InvalidArgument(f"Dockerfile line {ins.line}: WORKDIR needs a path")
        if not path.startswith("/"):
            path = os.path.normpath(os.path.join(state.config.workdir or "/", path))
        state = replace(state, config=replace(state.config, workdir=path))
        if _exists_in(state.base, path.lstrip("/")):
            return self._meta(state, ins, state.config)

        def make(tree: Path) -> None:
            target = tree / path.lstrip("/")
            target.mkdir(parents=True, exist_ok=True, mode=0o755)

        return self._layer(state, ins, "", make)

    def _copy(self, state: _State, ins: Instruction, env: dict[str, str]) -> _State:
        words = ins.json_args if ins.json_args is not None else split_words(ins.args)
        chown: tuple[int, int] | None = None
        args = []
        for word in words:
            if word.startswith("--chown="):
                chown = _numeric_owner(word.removeprefix("--chown="), ins)
            elif word.startswith("--chmod=") or word.startswith("--link") or word.startswith("--from"):
                raise InvalidArgument(f"Dockerfile line {ins.line}: {ins.keyword} {word.split('=')[0]} is not supported yet")
            else:
                args.append(substitute(word, env))
        if len(args) < 2:
            raise InvalidArgument(f"Dockerfile line {ins.line}: {ins.keyword} needs a source and a destination")
        *sources, dest = args
        if ins.keyword == "ADD" and any(re.match(r"^[a-z]+://", s) for s in sources):
            raise InvalidArgument(f"Dockerfile line {ins.line}: ADD from a URL is not supported (isobox builds offline)")
        files = [f for s in sources for f in self._context_paths(s, ins)]
        if not dest.startswith("/"):
            dest = os.path.join(state.config.workdir or "/", dest)
        into_dir = dest.endswith("/") or len(files) > 1 or any(f.is_dir() for f in files)
        content = hashlib.sha256()
        for f in files:
            content.update(str(f.relative_to(self.context)).encode() + b"\0" + _tree_hash(f).encode())

        def make(tree: Path) -> None:
            base = tree / dest.lstrip("/")
            for f in files:
                if f.is_dir():
                    target = base
                    target.mkdir(parents=True, exist_ok=True, mode=0o755)
                    _copy_tree(f, target, chown)
                elif ins.keyword == "ADD" and _is_tar(f):
                    base.mkdir(parents=True, exist_ok=True, mode=0o755)
                    _add_tar(f, base)
                else:
                    target = base / f.name if into_dir else base
                    target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
                    _copy_file(f, target, chown)

        return self._layer(state, ins, content.hexdigest(), make)

    def _context_paths(self, source: str, ins: Instruction) -> list[Path]:
        pattern = os.path.normpath(source.lstrip("/"))
        if pattern.startswith(".."):
            raise InvalidArgument(f"Dockerfile line {ins.line}: {source!r} is outside the build context")
        if any(c in pattern for c in "*?["):
            parent = (self.context / os.path.dirname(pattern)).resolve()
            matches = sorted(p for p in parent.iterdir() if fnmatch.fnmatch(p.name, os.path.basename(pattern))) \
                if parent.is_dir() else []
        else:
            matches = [self.context / pattern]
        found = []
        for path in matches:
            real = path.resolve()
            if real != self.context and self.context not in real.parents:
                raise InvalidArgument(f"Dockerfile line {ins.line}: {source!r} resolves outside the build context")
            if not real.exists():
                raise InvalidArgument(f"Dockerfile line {ins.line}: {source!r} not found in the build context {self.context}")
            found.append(real)
        if not found:
            raise InvalidArgument(f"Dockerfile line {ins.line}: no file in the context matches {source!r}")
        return found

    def _run(self, state: _State, ins: Instruction, env: dict[str, str]) -> _State:
        argv = ins.json_args if ins.json_args is not None else ["/bin/sh", "-c", ins.args]
        if state.base is None:
            raise InvalidArgument(f"Dockerfile line {ins.line}: RUN needs an image with a shell (FROM scratch has none)")
        key = self._key(state, ins, json.dumps(env, sort_keys=True))
        cached = self._cached(key)
        if cached is not None:
            self.progress(" ---> Using cache " + cached.short_id)
            return self._adopt(state, cached, ins)
        base = self._intermediate(state)
        upper_tree = self._run_container(base, state, argv, env, ins)
        with self.store.staging() as stage:
            tree = stage / "layer"
            try:
                os.rename(upper_tree, tree)  # the container is done with it; the tree is the layer
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                _copy_upper(upper_tree, tree)
            self._remove_container(upper_tree)
            _strip_mountpoints(tree)
            os.chmod(tree, 0o755)
            image = self._commit(state, base, tree, ins)
        self._remember(key, image)
        return self._adopt(state, image, ins)

    def _layer(self, state: _State, ins: Instruction, content: str, make: Any) -> _State:
        key = self._key(state, ins, content)
        cached = self._cached(key)
        if cached is not None:
            self.progress(" ---> Using cache " + cached.short_id)
            return self._adopt(state, cached, ins)
        base = self._intermediate(state) if state.base is not None else None
        with self.store.staging() as stage:
            tree = stage / "layer"
            tree.mkdir(mode=0o755)
            make(tree)
            image = self._commit(state, base, tree, ins)
        self._remember(key, image)
        return self._adopt(state, image, ins)

    def _commit(self, state: _State, base: Image | None, tree: Path, ins: Instruction) -> Image:
        history = [*state.pending_history, {"created": _now(), "created_by": f"{ins.keyword} {ins.args}"}]
        return self.store.commit([tree], state.config, None, self.progress, base=base, history=history)

    def _adopt(self, state: _State, image: Image, ins: Instruction) -> _State:
        self.progress(f" ---> {image.short_id}")
        return _State(base=image, config=state.config, history=list(image.history), args=state.args)

    def _intermediate(self, state: _State) -> Image:
        """The image so far with the current config (RUN runs with the ENV/WORKDIR/USER set)."""
        assert state.base is not None
        if not state.pending_history and state.config == state.base.config:
            return state.base
        steps = [h["created_by"] for h in state.pending_history]
        key = hashlib.sha256(json.dumps([state.base.id, state.config.to_json(), steps]).encode()).hexdigest()
        cached = self._cached(key)
        if cached is not None:
            state.pending_history = []
            return cached
        from isobox.images.store import _now_iso, config_blob

        with self.store.staging() as stage:
            staged = self.store.stage_base(state.base, stage)
            history = list(state.base.history) + state.pending_history
            staged.config = config_blob(state.config, [layer[3] for layer in staged.layers], history, _now_iso())
            image = self.store.store(staged, [], lambda _: None)
        self._remember(key, image)
        state.pending_history = []
        return image

    def _finish(self, state: _State, tags: list[str]) -> Image:
        if state.base is None:
            raise InvalidArgument("the Dockerfile made no layer (FROM scratch needs a COPY or ADD)")
        final = self._intermediate(state)
        for tag in tags:
            final = self.store.tag(final.id, tag)
        return final

    # -- RUN containers ---------------------------------------------------------------------

    def _run_container(self, base: Image, state: _State, argv: list[str], env: dict[str, str],
                       ins: Instruction) -> Path:
        from isobox.logs import read_entries
        from isobox.runtimes.container.runtime import data_dir, log_path
        from isobox.spec import WorkloadSpec

        spec = WorkloadSpec(image=base.id, command=argv[1:], entrypoint=argv[:1], env=dict(env),
                            workdir=state.config.workdir or "/", user=state.config.user or None,
                            network="none")
        info = self.engine.run(spec)
        container = info.id
        self._current = container
        offset = 0
        try:
            while True:
                rec = self.engine.store.find_container(container)
                with contextlib.suppress(FileNotFoundError), open(log_path(container), "rb") as log:
                    log.seek(offset)
                    data = log.read()
                    complete = data.rfind(b"\n") + 1
                    offset += complete
                    for entry in read_entries(data[:complete]):
                        self.progress(entry.data.decode(errors="replace").rstrip("\n"))
                if rec.state != "running":
                    break
                self.progress_tick()
                time.sleep(0.05)
            if rec.exit_code:
                raise RuntimeFailure(f"Dockerfile line {ins.line}: RUN {ins.args[:80]} exited with code {rec.exit_code}")
        except BaseException:
            self._remove_container_id(container)
            raise
        return data_dir(container) / "upper"

    def progress_tick(self) -> None:
        """Lets an interrupted client stop a long RUN: the progress callback raises then."""
        self.progress("")

    def _remove_container(self, upper: Path) -> None:
        self._remove_container_id(upper.parent.name)

    def _remove_container_id(self, container: str) -> None:
        with contextlib.suppress(IsoboxError):
            self.engine.remove(container, force=True)

    # -- cache ------------------------------------------------------------------------------

    def _key(self, state: _State, ins: Instruction, content: str) -> str:
        doc = [state.base.id if state.base else "scratch", state.config.to_json(), ins.keyword, ins.args, content]
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    def _cached(self, key: str) -> Image | None:
        if self.no_cache:
            return None
        try:
            image_id = json.loads(self.cache_path.read_text()).get(key)
        except (OSError, ValueError):
            return None
        if not image_id:
            return None
        try:
            return self.store.resolve(image_id)
        except IsoboxError:
            return None

    def _remember(self, key: str, image: Image) -> None:
        from isobox.images.store import _write_atomic

        with self.store._locked():
            try:
                cache = json.loads(self.cache_path.read_text())
            except (OSError, ValueError):
                cache = {}
            cache[key] = image.id
            _write_atomic(self.cache_path, json.dumps(cache).encode(), tmp_dir=self.store.tmp_dir)


# -- file helpers ---------------------------------------------------------------------------------


def _exists_in(image: Image | None, rel: str) -> bool:
    if image is None:
        return False
    for layer in reversed(image.layers):
        path = layer / rel
        with contextlib.suppress(OSError):
            st = os.lstat(path)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                return False  # whited out
            if stat.S_ISDIR(st.st_mode):
                return True
    return False


def _numeric_owner(text: str, ins: Instruction) -> tuple[int, int]:
    user, _, group = text.partition(":")
    if not user.isdigit() or (group and not group.isdigit()):
        raise InvalidArgument(f"Dockerfile line {ins.line}: --chown takes numeric UID[:GID] in isobox")
    return int(user), int(group or user)


def _tree_hash(path: Path) -> str:
    digest = hashlib.sha256()
    if path.is_dir():
        for rel, st, full in layer_tars.walk(path):
            digest.update(f"{rel}\0{stat.S_IMODE(st.st_mode)}\0{stat.S_IFMT(st.st_mode)}\0".encode())
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    digest.update(hashlib.file_digest(f, "sha256").digest())
            elif stat.S_ISLNK(st.st_mode):
                digest.update(os.readlink(full).encode())
    else:
        st = path.stat()
        digest.update(f"{stat.S_IMODE(st.st_mode)}\0".encode())
        with open(path, "rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


def _copy_file(source: Path, target: Path, chown: tuple[int, int] | None) -> None:
    if target.is_dir() and not target.is_symlink():
        target = target / source.name
    shutil.copy2(source, target, follow_symlinks=False)
    uid, gid = chown or (0, 0)
    os.lchown(target, uid, gid)


def _copy_tree(source: Path, target: Path, chown: tuple[int, int] | None) -> None:
    uid, gid = chown or (0, 0)
    for rel, st, full in layer_tars.walk(source):
        if not rel:
            continue
        dest = target / rel
        if stat.S_ISDIR(st.st_mode):
            dest.mkdir(exist_ok=True)
            os.chmod(dest, stat.S_IMODE(st.st_mode))
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(full), dest)
        elif stat.S_ISREG(st.st_mode):
            shutil.copy2(full, dest, follow_symlinks=False)
        else:
            continue  # sockets, fifos, devices of the context are not copied
        os.lchown(dest, uid, gid)


def _is_tar(path: Path) -> bool:
    import tarfile

    return path.is_file() and tarfile.is_tarfile(path)


def _add_tar(path: Path, target: Path) -> None:
    """ADD of a local archive: unpacked with the same checks as image layers."""
    import tarfile

    with open(path, "rb") as raw:
        stream, _ = layer_tars.open_maybe_compressed(raw)
        with tarfile.open(fileobj=stream, mode="r|") as probe:
            del probe  # is_tarfile said yes; the real pass follows
        raw.seek(0)
        stream, _ = layer_tars.open_maybe_compressed(raw)
        layer_tars.unpack(stream, target)


def _copy_upper(upper: Path, tree: Path) -> None:
    """The container's upper dir as a layer tree, minus the runtime's own mount points."""
    tree.mkdir(mode=0o755)
    for name in os.listdir(upper):
        source = upper / name
        dest = tree / name
        if os.path.isdir(source) and not os.path.islink(source):
            shutil.copytree(source, dest, symlinks=True, copy_function=_copy_special)
        else:
            _copy_special(str(source), str(dest))
    _copy_meta(upper, tree)


def _strip_mountpoints(tree: Path) -> None:
    """Leave out what the runtime made to mount over (empty files and directories only)."""
    for rel in RUNTIME_MOUNTPOINTS:
        path = tree / rel
        with contextlib.suppress(OSError):
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_size == 0:
                path.unlink()
            elif stat.S_ISDIR(st.st_mode) and not os.listdir(path):
                path.rmdir()


def _copy_special(source: str, dest: str) -> str:
    st = os.lstat(source)
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        os.mknod(dest, 0o600 | stat.S_IFCHR, 0)  # an overlayfs whiteout
    elif stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
        shutil.copy2(source, dest, follow_symlinks=False)
    elif stat.S_ISFIFO(st.st_mode):
        os.mkfifo(dest, stat.S_IMODE(st.st_mode))
    else:
        return dest
    os.lchown(dest, st.st_uid, st.st_gid)
    return dest


def _copy_meta(upper: Path, tree: Path) -> None:
    """Owners, modes and the opaque-dir xattr of directories (copytree keeps neither owner nor xattr)."""
    for rel, st, full in layer_tars.walk(upper):
        if not stat.S_ISDIR(st.st_mode):
            continue
        dest = tree / rel if rel else tree
        if not dest.is_dir():
            continue
        os.chown(dest, st.st_uid, st.st_gid)
        os.chmod(dest, stat.S_IMODE(st.st_mode))
        with contextlib.suppress(OSError):
            if os.getxattr(full, layer_tars.OPAQUE_XATTR) == b"y":
                os.setxattr(dest, layer_tars.OPAQUE_XATTR, b"y")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
