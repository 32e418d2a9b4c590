"""Build hook: the wheel carries what mim and the toolboxes look for.

OpenMMLab's packages ship their configs, tools and model index in ``<package>/.mim/``
(``mim search``/``train``/``test`` and mmpretrain's model hub read them there). The metadata
is in pyproject.toml; this adds only that copy, made when the wheel is built. An editable
install reads the same files from the repository instead (asmlp_mm.registry).
"""
import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))
#: what goes to asmlp_mm/.mim/, as in mmdet's, mmseg's and mmpretrain's wheels
MIM_FILES = ('configs', 'tools', 'model-index.yml')


class BuildPyWithMim(build_py):

    def run(self):
        super().run()
        if getattr(self, 'editable_mode', False):
            return
        mim = os.path.join(self.build_lib, 'asmlp_mm', '.mim')
        os.makedirs(mim, exist_ok=True)
        for name in MIM_FILES:
            src, dst = os.path.join(ROOT, name), os.path.join(mim, name)
            if os.path.isdir(src):
                shutil.copytree(src, dst, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
            else:
                shutil.copy2(src, dst)


setup(cmdclass={'build_py': BuildPyWithMim})
