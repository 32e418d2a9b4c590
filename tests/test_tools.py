"""tools/train.py and tools/test.py given wrong options or unusable checkpoints."""
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
from helpers import run_tool

from asmlp_mm.datasets import make_classification_folder

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TRAIN = osp.join(ROOT, 'tools', 'train.py')
TEST = osp.join(ROOT, 'tools', 'test.py')
CLS_DEMO = osp.join(ROOT, 'configs', 'demo', 'asmlp-demo_1xb8_shapes-cls.py')
DET_DEMO = osp.join(ROOT, 'configs', 'demo', 'cascade-mask-rcnn_asmlp-demo_fpn_shapes-coco.py')


def run_failing(*args, cwd):
    result = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True,
                            text=True)
    assert result.returncode != 0, result.stdout[-2000:]
    return result.stdout + result.stderr


@pytest.fixture
def data_options(tmp_path):
    data = tmp_path / 'shapes_cls'
    make_classification_folder(str(data), num_train=8, num_val=4, size=32)
    return ['--cfg-options', *(f'{loader}.dataset.data_root={data}'
                               for loader in ('train_dataloader', 'val_dataloader',
                                              'test_dataloader')),
            'train_cfg.max_epochs=2']


@pytest.mark.parametrize('tool', [TRAIN, TEST])
def test_a_new_top_level_cfg_option_is_refused_with_a_suggestion(tmp_path, tool):
    checkpoint = [] if tool == TRAIN else [tmp_path / 'none.pth']
    (tmp_path / 'none.pth').write_bytes(b'')
    out = run_failing(tool, CLS_DEMO, *checkpoint, '--cfg-options',
                      'test_dataloder.batch_size=1', cwd=tmp_path)
    assert "has no entry 'test_dataloder'" in out
    assert "did you mean 'test_dataloader'?" in out


MASK_RCNN_T = osp.join(ROOT, 'configs', 'mask_rcnn', 'mask-rcnn_asmlp-tiny_fpn_ms-crop-1x_coco.py')


@pytest.mark.parametrize('option,holders', [
    ('pretrained=other.pth', 'model.backbone.init_cfg.checkpoint'),
    ('data_root=/data/coco/', 'train_dataloader.dataset.data_root, val_dataloader.dataset.'
     'data_root, test_dataloader.dataset.data_root, val_evaluator.ann_file'),
])
def test_a_variable_of_the_config_file_is_refused_naming_what_holds_its_value(
        tmp_path, option, holders):
    """mmengine puts a config file's variables in place as it reads the file: setting
    pretrained=other.pth changed nothing, and the detector trained from the default
    pretrained file, silently."""
    out = run_failing(TRAIN, MASK_RCNN_T, '--cfg-options', option, '--work-dir',
                      tmp_path / 'work', cwd=tmp_path)
    key = option.split('=')[0]
    assert f"--cfg-options {key}: '{key}' is a variable of" in out
    assert 'setting it changes nothing' in out
    assert f'Set the entries that hold its value instead: {holders}' in out
    assert 'Traceback' not in out and not (tmp_path / 'work').exists()


def test_runner_entries_missing_from_the_config_are_accepted():
    from mmengine.config import Config

    from asmlp_mm.engine.options import check_cfg_options
    cfg = Config.fromfile(CLS_DEMO)
    assert 'find_unused_parameters' not in cfg and 'experiment_name' not in cfg
    check_cfg_options(cfg, {'find_unused_parameters': True, 'experiment_name': 'x',
                            'train_dataloader.batch_size': 2}, CLS_DEMO)
    # the runner puts the top-level data_preprocessor into a model that has none ...
    check_cfg_options(cfg, {'data_preprocessor.num_classes': 3}, CLS_DEMO)
    # ... and ignores it where the model has its own (mmseg's configs, mmdet's)
    with pytest.raises(ValueError, match='the model of .* has its own, which the runner '
                                         'keeps.*Set model.data_preprocessor instead'):
        check_cfg_options(Config.fromfile(MASK_RCNN_T), {'data_preprocessor.pad_size_divisor':
                                                         64}, MASK_RCNN_T)


def test_auto_scale_lr_without_a_base_batch_size_is_refused(tmp_path):
    config = tmp_path / 'no_base_batch.py'
    config.write_text(f'_base_ = {CLS_DEMO!r}\nauto_scale_lr = None\n')
    out = run_failing(TRAIN, config, '--auto-scale-lr', '--work-dir', tmp_path / 'w',
                      cwd=tmp_path)
    assert 'no auto_scale_lr.base_batch_size' in out
    assert not (tmp_path / 'w').exists()


def test_resume_with_only_a_broken_checkpoint_trains_from_scratch(tmp_path, data_options):
    work = tmp_path / 'work'
    work.mkdir()
    broken = work / 'epoch_3.pth'
    torch.save({'state_dict': {'x': torch.zeros(1000)}}, broken)
    broken.write_bytes(broken.read_bytes()[:300])  # cut off by a crash
    (work / 'last_checkpoint').write_text(str(broken))
    out = run_tool(TRAIN, CLS_DEMO, '--work-dir', work, '--resume', *data_options,
                   cwd=tmp_path, threads=1)
    assert 'no checkpoint that loads' in out
    assert 'Auto resumed' not in out and 'resumed epoch' not in out.lower()
    assert (work / 'epoch_2.pth').is_file()


def test_resume_from_a_checkpoint_of_another_model_is_refused(tmp_path, data_options):
    other = tmp_path / 'other.pth'
    torch.save({'state_dict': {'backbone.stem.weight': torch.zeros(8, 3, 3, 3)},
                'meta': {'epoch': 1, 'iter': 1}}, other)
    out = run_failing(TRAIN, CLS_DEMO, '--work-dir', tmp_path / 'work', '--resume', other,
                      *data_options, cwd=tmp_path)
    assert 'does not fit the model of this config' in out
    assert 'missing in the checkpoint: backbone.patch_embed' in out
    assert 'Traceback' not in out


def save_bare_backbone(path):
    """The state dict of the classification demo's backbone alone (keys without
    'backbone.'), as a converter or a timm-style training saves one."""
    from mmengine.config import Config

    from asmlp_mm.models import ASMLP
    backbone = Config.fromfile(CLS_DEMO).model.backbone
    backbone.pop('type')
    torch.save(ASMLP(**backbone).state_dict(), path)
    return path


@pytest.mark.parametrize('tool', [TRAIN, TEST])
def test_a_backbone_checkpoint_as_the_whole_model_is_refused_naming_the_fix(
        tmp_path, tool, data_options):
    """load_from (test.py's CHECKPOINT) with the weights of the backbone only loads not one
    weight: training started from random weights with a warning in the log, testing
    evaluated them. Both are refused, and the message says where such weights go."""
    bare = save_bare_backbone(tmp_path / 'backbone.pth')
    args = [CLS_DEMO, bare] if tool == TEST else [
        CLS_DEMO, '--cfg-options', f'load_from={bare}']
    out = run_failing(tool, *args, '--work-dir', tmp_path / 'work', *data_options,
                      cwd=tmp_path)
    assert "the model's keys start with 'backbone.' followed by the checkpoint's" in out
    assert "model.backbone.init_cfg=dict(type='Pretrained'" in out
    assert 'Traceback' not in out
    assert not list((tmp_path / 'work').rglob('*.pth'))


@pytest.mark.parametrize('option,value,message', [
    ('--dump-metrics', 'folder', "is a folder; give the path of the file to write"),
    ('--out', 'results.json', 'name the file with one of the suffixes .pkl, .pickle'),
    ('--out', 'results.PKL', 'name the file with one of the suffixes .pkl, .pickle'),
    ('--out', 'a_file/results.pkl', "a_file' is not a writable folder"),
    ('--dump-metrics', 'a_file/metrics.json', "a_file' is not a writable folder"),
])
def test_an_output_file_that_cannot_be_written_is_refused_before_testing(
        tmp_path, option, value, message):
    """--dump-metrics naming a folder failed only after the whole evaluation, with
    IsADirectoryError; --out with mmengine's message that does not name the option."""
    (tmp_path / 'folder').mkdir()
    (tmp_path / 'a_file').write_text('')
    checkpoint = tmp_path / 'ckpt.pth'
    checkpoint.write_bytes(b'')
    out = run_failing(TEST, CLS_DEMO, checkpoint, option, value, '--work-dir',
                      tmp_path / 'work', cwd=tmp_path)
    assert f'{option} {value!r}' in out and message in out
    assert 'Traceback' not in out and not (tmp_path / 'work').exists()


def test_a_head_of_another_class_count_is_refused_before_training(tmp_path, data_options):
    """ModelFitsHook, registered by tools/train.py and test.py (see test_engine.py)."""
    out = run_failing(TRAIN, CLS_DEMO, '--work-dir', tmp_path / 'work', *data_options,
                      'model.head.num_classes=4', cwd=tmp_path)
    assert ('the config does not fit together:\n  model.head.num_classes is 4, but the '
            'dataset of train_dataloader has 3 classes (circle, square, triangle)') in out
    assert 'Traceback' not in out and not list((tmp_path / 'work').rglob('*.pth'))


def test_missing_data_ends_the_tools_with_the_message_not_a_traceback(tmp_path):
    """The datasets' checks (DataError) ended tools/train.py with a traceback; a relative
    path is named with the folder it was looked for in."""
    out = run_failing(TRAIN, DET_DEMO, '--work-dir', tmp_path / 'work', '--cfg-options',
                      *(f'{loader}.dataset.data_root=nowhere/' for loader in (
                          'train_dataloader', 'val_dataloader', 'test_dataloader')),
                      cwd=tmp_path)
    assert ("CheckedCocoDataset: the annotation file 'nowhere/annotations/instances_train.json'"
            f" does not exist (looked for in {str(tmp_path)!r}). COCO 2017 is expected") in out
    assert 'Traceback' not in out
    assert 'pkg_resources is deprecated' not in out  # asmlp_mm.runtime: noise users cannot act on


@pytest.mark.parametrize('tool', [TRAIN, TEST])
def test_a_missing_annotation_file_of_the_evaluator_is_named_with_its_option(tmp_path, tool):
    """COCO's metric opens its ann_file when the runner builds it (after the datasets):
    FileNotFoundError with a traceback. The tools name the evaluator they build and its
    option (tools/test.py with --out built its evaluator before the check)."""
    from asmlp_mm.datasets.shapes import make_coco_dataset
    root = make_coco_dataset(str(tmp_path / 'coco'), num_train=2, num_val=2)
    key = 'val_evaluator' if tool == TRAIN else 'test_evaluator'
    (tmp_path / 'ckpt.pth').write_bytes(b'')  # not read: the evaluator fails first
    args = [] if tool == TRAIN else [tmp_path / 'ckpt.pth', '--out', tmp_path / 'r.pkl']
    out = run_failing(tool, DET_DEMO, *args, '--work-dir', tmp_path / 'work', '--cfg-options',
                      *(f'{loader}.dataset.data_root={root}/' for loader in (
                          'train_dataloader', 'val_dataloader', 'test_dataloader')),
                      *(f'{k}.ann_file=nothere.json' for k in ('val_evaluator',
                                                               'test_evaluator')),
                      cwd=tmp_path)
    assert (f"{key} (CocoMetric): the annotation file 'nothere.json' does not exist "
            f"(looked for in {str(tmp_path)!r}). The metric reads the ground truth from it; "
            f"set it with --cfg-options {key}.ann_file=PATH.") in out
    assert 'Traceback' not in out
    assert not list((tmp_path / 'work').rglob('*.pth')) and not (tmp_path / 'r.pkl').exists()


@pytest.mark.parametrize('tool', [TRAIN, TEST])
@pytest.mark.parametrize('work_dir,message', [
    ('a_file', 'cannot be made: it exists and is not a folder'),
    ('a_file/work', "cannot be made: '{}' is a file")])
def test_a_work_dir_that_cannot_be_made_is_refused(tmp_path, tool, work_dir, message):
    """mmengine failed with FileExistsError / NotADirectoryError tracebacks."""
    (tmp_path / 'a_file').write_text('')
    checkpoint = [] if tool == TRAIN else [tmp_path / 'ckpt.pth']
    (tmp_path / 'ckpt.pth').write_bytes(b'')
    out = run_failing(tool, CLS_DEMO, *checkpoint, '--work-dir', work_dir, cwd=tmp_path)
    assert f"work dir {str(tmp_path / work_dir)!r} " + message.format(tmp_path / 'a_file') in out
    assert 'Traceback' not in out


def test_checking_the_work_dir_leaves_no_folders_behind(tmp_path):
    """The check makes nothing (a run refused later, e.g. for a cfg option, leaves nothing
    behind; the processes of a distributed run check at once), and refuses a folder it
    cannot write in."""
    from asmlp_mm.engine.cli import check_work_dir
    check_work_dir(str(tmp_path / 'a' / 'b' / 'c'))
    assert list(tmp_path.iterdir()) == []
    (tmp_path / 'kept').mkdir()
    check_work_dir(str(tmp_path / 'kept'))
    assert [p.name for p in tmp_path.iterdir()] == ['kept']
    if os.geteuid() != 0:  # root may write anywhere
        (tmp_path / 'kept').chmod(0o500)
        with pytest.raises(SystemExit, match='is not writable'):
            check_work_dir(str(tmp_path / 'kept' / 'work'))


def test_a_data_error_is_its_message_and_the_traceback_of_its_cause():
    """The tools print a DataError without a traceback; where it wraps another error (a
    label map that the configured decoder could not read: a missing tifffile gave
    AttributeError), that error's traceback follows, which points at the real problem."""
    from asmlp_mm.engine.cli import run_loop

    from asmlp_mm.datasets.checks import InvalidDataError, MissingDataError

    class Runner:
        def register_hook(self, *args, **kwargs):
            pass

    def wrapped():
        try:
            None.imread
        except AttributeError as err:
            raise InvalidDataError('label map x.png cannot be read') from err

    def plain():
        raise MissingDataError('the image folder y does not exist')

    with pytest.raises(SystemExit) as exit_info:
        run_loop(wrapped, Runner())
    text = str(exit_info.value)
    assert text.startswith('label map x.png cannot be read\n\ncaused by:\nTraceback')
    assert text.endswith("AttributeError: 'NoneType' object has no attribute 'imread'")
    with pytest.raises(SystemExit, match=r'^the image folder y does not exist$'):
        run_loop(plain, Runner())


class _BadLabels(torch.utils.data.Dataset):
    """A dataset whose item fails as a checked dataset's would: plainly, or wrapping the
    decoder's error."""

    def __init__(self, wrapped: bool):
        self.wrapped = wrapped

    def __len__(self):
        return 1

    def __getitem__(self, idx):
        from asmlp_mm.datasets.checks import InvalidDataError
        if not self.wrapped:
            raise InvalidDataError('label map a.png has 3 channels:\nuse mode L')
        try:
            None.imread
        except AttributeError as err:
            raise InvalidDataError('label map x.png cannot be read') from err


@pytest.mark.parametrize('wrapped', [False, True])
def test_a_data_error_of_a_dataloader_worker_reads_as_in_the_main_process(wrapped):
    """A DataLoader worker's error arrives as a new error whose message is the worker's
    traceback; the tools print the original message (and the cause's traceback), not the
    traceback of the checks."""
    from asmlp_mm.engine.cli import data_error_text

    from asmlp_mm.datasets.checks import InvalidDataError
    loader = torch.utils.data.DataLoader(_BadLabels(wrapped), num_workers=1)
    with pytest.raises(InvalidDataError) as error_info:
        next(iter(loader))
    assert 'DataLoader worker process 0' in str(error_info.value)  # torch's layout
    text = data_error_text(error_info.value)
    if not wrapped:
        assert text == ('label map a.png has 3 channels:\nuse mode L '
                        '(in DataLoader worker process 0)')
    else:
        assert text.startswith('label map x.png cannot be read (in DataLoader worker process 0)'
                               '\n\ncaused by:\nTraceback (most recent call last):\n')
        assert text.endswith("AttributeError: 'NoneType' object has no attribute 'imread'")
        assert 'The above exception' not in text and 'Caught' not in text


def test_resume_without_a_checkpoint_starts_from_the_configs_load_from(tmp_path, data_options):
    """--resume in a new work dir set load_from to None: a fine-tuning config (the B-384
    one loads the 224 model) trained from random weights instead. Here the weights to start
    from are marked (head bias 7) and the learning rate is 0: they must come out as they
    went in."""
    from asmlp_mm.analysis import save_initial_weights
    start = tmp_path / 'start.pth'
    save_initial_weights(CLS_DEMO, str(start))
    checkpoint = torch.load(start, weights_only=True)
    checkpoint['state_dict']['head.fc.bias'].fill_(7.)
    torch.save(checkpoint, start)
    out = run_tool(TRAIN, CLS_DEMO, '--work-dir', tmp_path / 'work', '--resume',
                   *data_options, f'load_from={start}',
                   'optim_wrapper.optimizer.lr=0.', cwd=tmp_path, threads=1)
    assert (f"--resume: no checkpoint that loads in {tmp_path / 'work'}, training from "
            f"load_from={str(start)!r}") in out
    trained = torch.load(tmp_path / 'work' / 'epoch_2.pth', weights_only=False)
    assert torch.all(trained['state_dict']['head.fc.bias'] == 7.)
