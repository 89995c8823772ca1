"""The in-process llama.cpp batch (llm/batch.py), its lazy grammar and the thread count, with the
real SmolLM2-135M: short answers and a small context, as the machine is shared."""

import json

import pytest
from conftest import run_ipo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipo_cli.errors import IpoError
from ipo_cli.llm.base import SamplingSettings, batch_tag, generate_many
from ipo_cli.llm.llama import LlamaCppLLM
from ipo_cli.llm.threads import cpu_quota, physical_cores, usable_cores
from ipo_cli.optimize import meta_prompt as mp

MESSAGES = [{"role": "system", "content": "You write prompts for an image classifier."},
            {"role": "user", "content": "Write a prompt for photos of clothes with <CLASS> where the class goes. "
                                        "Answer between <INS> and </INS>."}]
SHORT = SamplingSettings(temperature=1.0, top_p=0.95, max_tokens=12)


def ins(text: str, partial: bool = False) -> bool:
    """Whether `text` is a sentence of INS_GRAMMAR (`"<INS>" side "<CLASS>" side "</INS>"`, side =
    up to 70 characters other than <>{} and newline), or with `partial` the beginning of one (an
    answer cut at max_tokens). A side cannot hold '<', so the walk is deterministic."""
    i = 0
    for n, literal in enumerate(("<INS>", "<CLASS>", "</INS>")):
        for char in literal:
            if i == len(text):
                return partial
            if text[i] != char:
                return False
            i += 1
        if n < 2:
            start = i
            while i < len(text) and text[i] not in "<>{}\n":
                i += 1
            if i - start > 70:
                return False
    return i == len(text)


@pytest.fixture(scope="module")
def today(smollm):
    """ipo's path before issue 20: one context of one sequence, llama-cpp-python's create_completion."""
    return LlamaCppLLM(smollm, n_ctx=512, n_threads=1, batch=False, lazy_grammar=False)


@pytest.fixture(scope="module")
def batched(smollm):
    return LlamaCppLLM(smollm, n_ctx=1024, n_threads=1)


def texts(gens):
    return [g.text for g in gens]


def held(llm, seq_id):
    """The last position sequence `seq_id` holds in the KV cache (-1: none)."""
    import llama_cpp

    return llama_cpp.llama_memory_seq_pos_max(llama_cpp.llama_get_memory(llm.llama._ctx.ctx), seq_id)


def test_one_sequence_gives_todays_text(today, batched):
    """A batch of one sequence in the N-sequence context samples exactly as create_completion does."""
    for seed in (1, 7, 42, 2**31 + 5):
        old = today.generate(MESSAGES, seed, SHORT)
        (new,) = generate_many(batched, MESSAGES, [seed], SHORT)
        assert (new.text, new.finish_reason, new.usage.completion_tokens) == \
            (old.text, old.finish_reason, old.usage.completion_tokens)
    assert batched.batched_for(5) and not batched.batched_for(1) and not today.batched_for(5)
    assert batch_tag(today, [1, 2]) == "" and batch_tag(batched, [1, 2]) == "batch:1,2"


def test_a_batch_of_five_is_reproducible_and_shares_the_prompt(smollm, batched):
    seeds = [11, 12, 13, 14, 15]
    first = batched.generate_many(MESSAGES, seeds, SHORT)
    again = batched.generate_many(MESSAGES, seeds, SHORT)
    fresh = LlamaCppLLM(smollm, n_ctx=1024, n_threads=1).generate_many(MESSAGES, seeds, SHORT)
    assert texts(first) == texts(again) == texts(fresh)
    assert [g.seed for g in first] == seeds and len(set(texts(first))) > 1  # each its own seed
    # the prompt is evaluated once: every sequence but the first reuses all of it
    assert all(g.usage.evaluated_tokens == 0 for g in first[1:])
    assert again[0].usage.evaluated_tokens == 1  # the whole prompt was still held: its last token again


def test_the_kv_cache_is_handed_back_clean(smollm, batched):
    """After many calls of every kind, a batch answers as on a fresh model, and only the prompt
    is left in sequence 0."""
    other = [{"role": "user", "content": "Name a colour."}]
    for i in range(6):
        batched.generate_many(other if i % 2 else MESSAGES, [i, i + 1, i + 2][: 1 + i % 3], SHORT,
                              grammar=mp.INS_GRAMMAR if i % 3 == 0 else None)
        prompt = batched.tokenize(batched.render(other if i % 2 else MESSAGES)[0])
        assert held(batched, 0) == len(prompt) - 1 and all(held(batched, s) == -1 for s in range(1, 4))
    seeds = [3, 1, 4, 1, 5]
    used = batched.generate_many(MESSAGES, seeds, SHORT)
    fresh = LlamaCppLLM(smollm, n_ctx=1024, n_threads=1).generate_many(MESSAGES, seeds, SHORT)
    assert texts(used) == texts(fresh)


def test_create_completion_and_the_batch_share_one_context(smollm):
    """The grammar-first sequential path (create_completion) after a batch, and a batch after it,
    on one model: each reuses what the other left and answers as alone."""
    both = LlamaCppLLM(smollm, n_ctx=1024, n_threads=1, lazy_grammar=False)
    alone = LlamaCppLLM(smollm, n_ctx=1024, n_threads=1, lazy_grammar=False)
    batch_first = texts(both.generate_many(MESSAGES, [5, 6], SHORT))
    single = both.generate(MESSAGES, 9, SHORT)
    assert single.usage.reused_tokens > 0  # the batch's prompt, still held
    assert single.text == alone.generate(MESSAGES, 9, SHORT).text
    assert texts(both.generate_many(MESSAGES, [5, 6], SHORT)) == batch_first


def test_the_grammar_check_of_these_tests():
    assert ins("<INS>a photo of a<CLASS>, blurry.</INS>") and ins("<INS><CLASS></INS>")
    assert not ins("<INS>a photo<CLASS>.</INS> more") and not ins("<INS>a {photo}<CLASS></INS>")
    assert not ins("<INS>" + "x" * 71 + "<CLASS></INS>") and not ins("<INS>a<CLASS>b")
    assert ins("<INS>a<CLASS>b", partial=True) and ins("<IN", partial=True) and not ins("<INX", partial=True)


def grammar_ok(gen):
    return ins(gen.text, partial=gen.finish_reason == "length")


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seeds=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=3), lazy=st.booleans())
def test_answers_satisfy_the_grammar(smollm, batched, today, seeds, lazy):
    """Whatever the seeds: the lazy grammar (batched and one by one) and grammar-first sampling
    give answers of INS_GRAMMAR, whole when they stop, a beginning of one when cut at max_tokens."""
    wide = SamplingSettings(temperature=1.0, top_p=0.95, max_tokens=40)
    llm = batched if lazy else today
    gens = llm.generate_many(MESSAGES, seeds, wide, grammar=mp.INS_GRAMMAR)
    assert len(gens) == len(seeds)
    for gen in gens:
        assert grammar_ok(gen), (gen.text, gen.finish_reason)


def test_an_invalid_grammar_is_one_clear_error(batched):
    with pytest.raises(IpoError, match="GBNF"):
        batched.generate_many(MESSAGES, [1, 2], SHORT, grammar='root ::= "unclosed')
    assert texts(batched.generate_many(MESSAGES, [1, 2], SHORT))  # the model still answers


def test_more_candidates_than_the_context_holds_come_in_groups(smollm):
    """n_ctx fits the prompt and two answers: five seeds are decoded as 2 + 2 + 1, reproducibly."""
    probe = LlamaCppLLM(smollm, n_ctx=256, n_threads=1)
    prompt = len(probe.tokenize(probe.render(MESSAGES)[0]))
    tight = SamplingSettings(temperature=1.0, top_p=0.95, max_tokens=(256 - prompt) // 2 - 4)
    first = probe.generate_many(MESSAGES, [1, 2, 3, 4, 5], tight)
    assert texts(first) == texts(probe.generate_many(MESSAGES, [1, 2, 3, 4, 5], tight))
    assert [g.usage.evaluated_tokens == 0 for g in first] == [False, True, False, True, False]


# ---- threads -------------------------------------------------------------------------------------
def fake_machine(root, siblings, cgroup_v2=None, cgroup_v1=None, own_cgroup=None):
    """A /sys and /proc under `root`: cpuN's thread_siblings mask, a cgroup v2 cpu.max (at the
    mount point, or in the process's own cgroup folder) or v1 cfs quota and period."""
    for cpu, mask in siblings.items():
        topo = root / f"sys/devices/system/cpu/cpu{cpu}/topology"
        topo.mkdir(parents=True)
        (topo / "thread_siblings").write_text(mask + "\n")
    cg = root / "sys/fs/cgroup"
    cg.mkdir(parents=True, exist_ok=True)
    if own_cgroup and cgroup_v2:
        (root / "proc/self").mkdir(parents=True)
        (root / "proc/self/cgroup").write_text(f"0::/{own_cgroup}\n")
        (cg / own_cgroup).mkdir(parents=True)
        (cg / own_cgroup / "cpu.max").write_text(cgroup_v2 + "\n")
    elif cgroup_v2:
        (cg / "cpu.max").write_text(cgroup_v2 + "\n")
    if cgroup_v1:
        folder = cg / "cpu,cpuacct" / (own_cgroup or "")
        folder.mkdir(parents=True)
        (folder / "cpu.cfs_quota_us").write_text(f"{cgroup_v1[0]}\n")
        (folder / "cpu.cfs_period_us").write_text(f"{cgroup_v1[1]}\n")
        if own_cgroup:
            (root / "proc/self").mkdir(parents=True)
            (root / "proc/self/cgroup").write_text(f"5:cpu,cpuacct:/{own_cgroup}\n1:name=systemd:/\n0::/\n")
    return root


# 4 cores with 2 hyperthreads each: cpuN and cpuN+4 are siblings (as Linux numbers them on x86)
HT = {cpu: format((1 << (cpu % 4)) | (1 << (cpu % 4 + 4)), "02x") for cpu in range(8)}


def test_threads_are_the_physical_cores_the_process_may_use(tmp_path):
    root = fake_machine(tmp_path / "ht", HT)
    assert usable_cores(root, affinity=range(8)).threads == 4  # llama.cpp's count: one per core
    assert usable_cores(root, affinity={0, 4}).threads == 1  # taskset to one core's two threads
    assert usable_cores(root, affinity={0, 1, 2}).threads == 3
    assert physical_cores(range(8), tmp_path / "no-sys") == 8  # no topology: every CPU counts
    quota = fake_machine(tmp_path / "v2", HT, cgroup_v2="200000 100000")
    assert cpu_quota(quota) == 2.0 and usable_cores(quota, affinity=range(8)).threads == 2
    assert "quota 2" in usable_cores(quota, affinity=range(8)).why
    own = fake_machine(tmp_path / "own", HT, cgroup_v2="150000 100000", own_cgroup="user.slice/job")
    assert usable_cores(own, affinity=range(8)).threads == 1  # 1.5 CPUs: one thread that never waits
    assert usable_cores(fake_machine(tmp_path / "max", HT, cgroup_v2="max 100000"), affinity=range(8)).threads == 4
    assert usable_cores(fake_machine(tmp_path / "tiny", HT, cgroup_v2="20000 100000"), affinity=range(8)).threads == 1
    v1 = fake_machine(tmp_path / "v1", HT, cgroup_v1=(300000, 100000))
    assert usable_cores(v1, affinity=range(8)).threads == 3
    assert usable_cores(fake_machine(tmp_path / "v1none", HT, cgroup_v1=(-1, 100000)), affinity=range(8)).threads == 4
    v1_own = fake_machine(tmp_path / "v1own", HT, cgroup_v1=(200000, 100000), own_cgroup="docker/abc")
    assert cpu_quota(v1_own) == 2.0


# ---- the loop's one call per step, through the CLI ---------------------------------------------------
def args(fashion_train, smollm, tiny_config, tiny_checkpoint, out):
    return ["optimize", fashion_train, "--classes", fashion_train / "classes.txt", "--shots", "1",
            "--steps", "2", "--candidates", "3", "--llm", smollm, "--n-ctx", "2048", "--lmm", "none",
            "--max-tokens", "60", "--clip", tiny_config, "--clip-weights", tiny_checkpoint, "--out", out, "--json"]


def test_optimize_batches_each_step_and_no_batch_does_not(tmp_path, fashion_train, smollm, tiny_config, tiny_checkpoint):
    runs = {}
    for name, extra in (("batch", ["--threads", "1"]), ("single", ["--no-batch", "--threads", "1"])):
        out = tmp_path / name
        result = run_ipo(*args(fashion_train, smollm, tiny_config, tiny_checkpoint, out), *extra)
        assert result.returncode == 0, result.stderr
        plan = json.loads(result.stdout)["plan"]
        config = json.loads((out / "config.json").read_text())
        assert plan["llm_threads"] == 1 and config["llm_answers"]["threads"] == 1
        assert plan["llm_batch"] == config["llm_answers"]["batch"] == (name == "batch")
        records = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
        runs[name] = [r for r in records if r["type"] == "candidate" and r["step"] > 0]
    for name, candidates in runs.items():
        assert len(candidates) >= 6
        for r in candidates:
            assert ins(r["raw"], partial=r["reason"] is not None and "cut off" in r["reason"]), r["raw"]
            later = r["index"] > 0 and not r["cached"]
            # one batch per step: the step's later candidates evaluate none of the prompt
            assert (r["usage"]["evaluated_tokens"] == 0) == (later and name == "batch"), r


def _fake_proc(root, cpu_jiffies, own_jiffies):
    """/proc/stat with one `cpuN` line per CPU (user nice system idle iowait irq softirq steal)
    and /proc/self/stat whose utime+stime are `own_jiffies` (fields 14 and 15, proc(5)); the
    command name holds ') (' as a hostile one may."""
    (root / "proc/self").mkdir(parents=True, exist_ok=True)
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    lines += [f"cpu{n} {busy} 0 0 {idle} 0 0 0 0 0 0" for n, (busy, idle) in enumerate(cpu_jiffies)]
    (root / "proc/stat").write_text("\n".join(lines) + "\nintr 1 2 3\n")
    (root / "proc/self/stat").write_text(f"42 (ipo ) (x) R 1 1 1 0 -1 0 0 0 0 0 {own_jiffies} 0 0 0 20 0 3 0\n")


def test_free_threads_are_the_usable_cores_less_what_others_keep_busy(tmp_path):
    from ipo_cli.llm.threads import LoadProbe, free_threads

    probe = LoadProbe({0, 1}, tmp_path)
    _fake_proc(tmp_path, [(1000, 1000), (1000, 1000)], own_jiffies=500)
    probe.start()
    # 100 jiffies pass on each CPU: CPU 0 fully busy, 40 of them ours; CPU 1 busy 60
    _fake_proc(tmp_path, [(1100, 1000), (1060, 1040)], own_jiffies=540)
    assert probe.others() == pytest.approx((160 - 40) / 200 * 2)  # 1.2 cores taken by others
    assert free_threads(2, probe.others()) == 1
    assert free_threads(8, 1.2) == 7 and free_threads(8, 1.6) == 6 and free_threads(2, 5.0) == 1
    assert free_threads(4, 0.0) == 4 and free_threads(4, None) == 4  # unreadable load: the usable count
    only_cpu1 = LoadProbe({1}, tmp_path)  # a CPU outside the affinity does not count
    _fake_proc(tmp_path, [(10, 10), (10, 10)], own_jiffies=0)
    only_cpu1.start()
    _fake_proc(tmp_path, [(110, 10), (10, 110)], own_jiffies=0)
    assert only_cpu1.others() == 0.0


def test_threads_fit_beside_a_busy_process_and_a_chosen_count_is_kept(smollm):
    """A real CPU-bound process on one of two cores: the fitted count leaves it its core."""
    import subprocess
    import sys
    import time

    from ipo_cli.llm.threads import fit_threads

    busy = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 20\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.5)
        assert fit_threads(2, cpus={0, 1}) == 1
        llm = LlamaCppLLM(smollm, n_ctx=512)  # threads not chosen: fitted before each call
        chosen = LlamaCppLLM(smollm, n_ctx=512, n_threads=2)
        messages = [{"role": "user", "content": "Say hi."}]
        llm.generate(messages, 1, SHORT)
        chosen.generate(messages, 1, SHORT)
        assert (llm.fit, llm.threads_now) == (True, 1)
        assert (chosen.fit, chosen.threads_now) == (False, 2)
    finally:
        busy.kill()
        busy.wait()


def test_the_answers_do_not_depend_on_the_thread_count(smollm):
    """Fitting the threads to the load must not change what a seed gives: ggml splits a
    matrix product by rows, each row summed by one thread."""
    one = LlamaCppLLM(smollm, n_ctx=1024, n_threads=1)
    two = LlamaCppLLM(smollm, n_ctx=1024, n_threads=2)
    messages = [{"role": "user", "content": "Write a prompt for photos of clothes."}]
    for seeds in ([3], [5, 6, 7]):
        assert texts(generate_many(one, messages, seeds, SHORT, mp.INS_GRAMMAR)) == \
            texts(generate_many(two, messages, seeds, SHORT, mp.INS_GRAMMAR))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stat=st.text(max_size=300), self_stat=st.text(max_size=120), usable=st.integers(1, 64),
       others=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)))
def test_a_garbled_proc_never_gives_a_thread_count_outside_one_to_usable(tmp_path, stat, self_stat, usable, others):
    """/proc/stat and /proc/self/stat are read as outside text: whatever they hold, the probe
    gives a load or None, never an exception, and the count stays within 1..usable."""
    import math

    from ipo_cli.llm.threads import LoadProbe, free_threads

    (tmp_path / "proc/self").mkdir(parents=True, exist_ok=True)
    (tmp_path / "proc/stat").write_text(stat)
    (tmp_path / "proc/self/stat").write_text(self_stat)
    probe = LoadProbe({0, 1}, tmp_path)
    probe.start()
    load = probe.others()
    assert load is None or (math.isfinite(load) and load >= 0)
    if others is not None and not math.isfinite(others):
        others = None  # the probe gives finite loads only (checked above)
    assert 1 <= free_threads(usable, others if others is None else abs(others)) <= usable
