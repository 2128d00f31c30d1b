import os
import subprocess
import sys

from fracjax import hostmem


def test_hugepage_environ_keeps_other_tunables_and_replaces_an_old_setting():
    env = hostmem.hugepage_environ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0", "A": "1"})
    assert env["GLIBC_TUNABLES"].split(":") == ["glibc.malloc.arena_max=2", hostmem.HUGEPAGE_TUNABLE]
    assert env["A"] == "1"
    assert hostmem.malloc_hugepages_enabled(env)
    assert not hostmem.malloc_hugepages_enabled({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
    assert not hostmem.malloc_hugepages_enabled({})


def test_availability_follows_the_kernels_transparent_hugepage_mode(tmp_path):
    never, madvise = tmp_path / "never", tmp_path / "madvise"
    never.write_text("always madvise [never]\n")
    madvise.write_text("always [madvise] never\n")
    assert not hostmem.malloc_hugepages_available(str(never))
    assert not hostmem.malloc_hugepages_available(str(tmp_path / "missing"))
    has_tunable = sys.platform.startswith("linux") and hostmem._glibc_version() >= (2, 35)
    assert hostmem.malloc_hugepages_available(str(madvise)) == has_tunable


def _child_tunables(extra_env):
    code = ("from fracjax.hostmem import reexec_with_malloc_hugepages as r; r(); "
            "import os; print(os.environ.get('GLIBC_TUNABLES', ''))")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "FRACJAX_HUGEPAGES_REEXEC")}
    env.update(extra_env)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_reexec_sets_the_tunable_where_available_and_respects_the_opt_out():
    expected = hostmem.HUGEPAGE_TUNABLE if hostmem.malloc_hugepages_available() else ""
    assert _child_tunables({}) == expected
    assert _child_tunables({hostmem.OPT_OUT_ENV: "1"}) == ""


def test_the_note_appears_only_where_huge_pages_would_help_and_are_off():
    assert hostmem.HUGEPAGE_TUNABLE in hostmem.hugepages_note({}, available=True)
    assert hostmem.hugepages_note({"GLIBC_TUNABLES": hostmem.HUGEPAGE_TUNABLE}, available=True) is None
    assert hostmem.hugepages_note({}, available=False) is None
    assert hostmem.hugepages_note({hostmem.OPT_OUT_ENV: "1"}, available=True) is None


def test_python_dash_m_fracjax_train_does_not_reexecute():
    # os.execve replaced by a marker: the module must parse its flags without ever calling it.
    code = ("import os, runpy, sys\n"
            "os.execve = lambda *a: sys.exit('re-executed')\n"
            "sys.argv = ['fracjax.train', '--batch-size', '0']\n"
            "runpy.run_module('fracjax.train', run_name='__main__')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "FRACJAX_HUGEPAGES_REEXEC")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "re-executed" not in out.stderr
    assert out.returncode == 2 and "--batch-size" in out.stderr  # the parser ran and refused the flag
