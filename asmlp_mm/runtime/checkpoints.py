"""mmengine's checkpoint files, read safely on torch >= 2.6 and written crash-safe.

:func:`patch_checkpoint_loading` works around open-mmlab/mmengine#1655: mmengine 0.10.7
reads local files with ``torch.load`` as torch's default has it, which is
``weights_only=True`` since torch 2.6 and refuses mmengine's own training checkpoints
(``load_from`` and ``--resume`` fail), and it reads downloads with
``torch.hub.load_state_dict_from_url``, which unpickles anything. Both schemes of its
``CheckpointLoader`` go through :func:`asmlp_mm.checkpoint_io.load_local_checkpoint`
instead, which reads tensors and plain data and runs nothing: this covers ``load_from``,
``--resume``, ``init_cfg=dict(type='Pretrained')`` and ``load_checkpoint``. It can go when
mmengine reads checkpoints safely itself (a release after 0.10.7).

:func:`use_atomic_local_writes` works around mmengine's local backend writing a checkpoint
into its final path: a process killed during the save leaves a truncated file that
``last_checkpoint`` may already name. It can go when mmengine's ``LocalBackend.put`` writes
through a temporary file.
"""
import os
import os.path as osp
import tempfile

from mmengine.fileio import LocalBackend, register_backend
from mmengine.runner.checkpoint import CheckpointLoader

from ..checkpoint_io import load_local_checkpoint, load_url_checkpoint


def load_from_local(filename, map_location=None):
    """mmengine's local-file checkpoint scheme: :func:`load_local_checkpoint` (mmengine
    logs the scheme by the name of this function)."""
    return load_local_checkpoint(filename, map_location)


def load_from_http(filename, map_location=None):
    """mmengine's http(s) checkpoint scheme: :func:`load_url_checkpoint`."""
    return load_url_checkpoint(filename, map_location)


def patch_checkpoint_loading() -> None:
    """Route mmengine's loading of checkpoint files and URLs through this package's
    reader (see the module's docstring)."""
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local, force=True)
    CheckpointLoader.register_scheme(prefixes=('http://', 'https://'), loader=load_from_http,
                                     force=True)


def _mode_of_a_new_file() -> int:
    """The permissions ``open(path, 'w')`` gives a new file: 0o666 less the umask."""
    try:  # Linux says the umask without changing it, which other threads would see
        with open('/proc/self/status') as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith('Umask:'))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


class AtomicLocalBackend(LocalBackend):
    """Local file backend whose writes are atomic (temporary file, fsync, rename).

    The file gets the permissions a plain write would give it (``mkstemp`` alone would
    make every checkpoint readable by its owner only).
    """

    def put(self, obj: bytes, filepath) -> None:
        filepath = str(filepath)
        folder = osp.dirname(osp.abspath(filepath))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix='.tmp_', suffix=osp.basename(filepath))
        try:
            os.fchmod(fd, _mode_of_a_new_file())
            with os.fdopen(fd, 'wb') as f:
                f.write(obj)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, filepath)
        except BaseException:
            if osp.exists(tmp):
                os.remove(tmp)
            raise

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        self.put(obj.encode(encoding), filepath)


def use_atomic_local_writes() -> None:
    """Make mmengine's default local backend the atomic one (checkpoints, dumps)."""
    register_backend('local', AtomicLocalBackend, force=True, prefixes='')
