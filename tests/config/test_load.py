import pytest

from fif.config import Config, apply_overrides, dump_yaml, field_help, load_config, preset_names
from fif.core.typed import ConfigError


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads(name):
    cfg = load_config(name)
    assert isinstance(cfg, Config)
    assert load_config(None, base=cfg.to_dict()) == cfg  # the saved config.yaml round-trips


def test_presets_exist():
    assert {"mini", "fif"} <= set(preset_names())


def test_overrides_are_typed():
    cfg = load_config("mini", ["train.lr=1e-3", "stream.tasks=3", "train.grad_clip=null", "eval.datasets=a,b"])
    assert cfg.train.lr == 1e-3 and cfg.stream.tasks == 3 and cfg.train.grad_clip is None
    assert cfg.eval.datasets == ["a", "b"]


def test_unknown_key_suggests_nearest():
    with pytest.raises(ConfigError) as e:
        load_config("mini", ["train.lrr=1", "trian.lr=1"])
    msg = str(e.value)
    assert "train.lrr" in msg and "did you mean lr" in msg
    assert "trian" in msg and "did you mean train" in msg
    assert len(e.value.problems) == 2  # all errors at once


def test_wrong_types_name_the_key():
    with pytest.raises(ConfigError) as e:
        load_config("mini", ["train.batch_size=big", "train.lr=fast", "stream.reverse=maybe"])
    msg = str(e.value)
    for key in ("train.batch_size", "train.lr", "stream.reverse"):
        assert key in msg


def test_cross_field_validation():
    with pytest.raises(ConfigError, match="must sum to 1"):
        load_config("mini", ["data.mixture.pretraining=0.5"])
    with pytest.raises(ConfigError, match="unknown method.name 'finetun'; did you mean 'finetune'"):
        load_config("mini", ["method.name=finetun"])
    with pytest.raises(ConfigError, match="takes no options"):
        load_config("mini", ["method.rank=4"])
    with pytest.raises(ConfigError, match="budget.accounting: 'papr' is not one of exact, paper"):
        load_config("mini", ["budget.accounting=papr"])
    assert load_config("mini", []).budget.accounting == "exact"
    assert load_config("mini", ["budget.accounting=paper"]).budget.accounting == "paper"


def test_method_options_routed_to_options():
    data = apply_overrides({}, ["method.name=x", "method.rank=4"])
    assert data == {"method": {"name": "x", "options": {"rank": 4}}}


def test_unknown_preset_and_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="did you mean mini"):
        load_config("minni")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"))


def test_yaml_dump_and_help():
    text = dump_yaml(load_config("mini"))
    assert "train:" in text and "batch_size: 128" in text
    keys = [k for k, _, _ in field_help()]
    assert "train.lr" in keys and "data.mixture.update" in keys


def test_recipe_knobs_validate_all_at_once():
    with pytest.raises(ConfigError) as e:
        load_config("mini", [
            "train.optimizer=adamx", "train.optimizer_impl=fast", "train.temperature=frozen",
            "train.grad_accum_steps=0", "train.label_smoothing=1.0", "train.fixed_logit_scale=200",
            "train.anneal_shape=cos", "train.cooldown_frac=1.0", "train.decay_frac=-0.1",
        ])
    text = "\n".join(e.value.problems)
    for key in ("optimizer: 'adamx'", "did you mean adamw", "optimizer_impl", "temperature", "grad_accum_steps",
                "label_smoothing", "fixed_logit_scale: 200", "did you mean cosine", "cooldown_frac", "decay_frac"):
        assert key in text, key
    assert "train.grad_accum_steps: 256 must be in [1, train.batch_size=128]" in str(
        pytest.raises(ConfigError, load_config, "mini", ["train.grad_accum_steps=256"]).value
    )


def test_recipe_knobs_reach_the_schedule_spec():
    from fif.config.components import schedule_from_config

    cfg = load_config("mini", ["train.schedule=wsd", "train.decay_frac=0.3", "train.anneal_shape=sqrt",
                               "train.temperature=fixed", "train.fixed_logit_scale=30"])
    spec = schedule_from_config(cfg.train)
    assert (spec.decay_frac, spec.anneal_shape, spec.cooldown_frac) == (0.3, "sqrt", 0.1)
    assert cfg.train.fixed_logit_scale == 30.0


def test_worker_counts_default_and_are_checked():
    from fif.config.components import eval_workers

    cfg = load_config("mini", ["data.num_workers=3"])
    assert cfg.eval.num_workers is None and eval_workers(cfg.eval, cfg.data) == 3  # evaluation follows data
    cfg = load_config("mini", ["data.num_workers=3", "eval.num_workers=0"])
    assert eval_workers(cfg.eval, cfg.data) == 0
    with pytest.raises(ConfigError, match=r"(?s)data.num_workers: -1 must be >= 0.*eval.num_workers: -2 must be >= 0"):
        load_config("mini", ["data.num_workers=-1", "eval.num_workers=-2"])


def test_the_fif_preset_gives_ewc_and_mas_fifs_settings_and_explicit_options_win():
    from fif.methods import method_class, registered_methods

    assert load_config("fif", ["method.name=ewc"]).method.options == {"fisher_samples": 50_000}
    assert load_config("fif", ["method.name=mas"]).method.options == {"importance_samples": 50_000}
    assert load_config("fif", ["method.name=ewc", "method.fisher_samples=1000"]).method.options == {
        "fisher_samples": 1000
    }
    assert load_config("fif", []).method.options == {}  # finetune has no entry
    assert load_config("mini", ["method.name=ewc"]).method.options == {}  # the mini preset keeps fif's defaults
    # one source of truth: the preset's entries are the methods' paper_options (`fif budget --accounting paper`)
    papers = {n: method_class(n).paper_options for n in registered_methods() if method_class(n).paper_options}
    assert load_config("fif", []).method.defaults == papers
    again = load_config(None, base=load_config("fif", ["method.name=ewc"]).to_dict())  # a run's config.yaml
    assert again.method.options == {"fisher_samples": 50_000}


def test_bad_method_defaults_name_the_key():
    with pytest.raises(ConfigError, match="method.defaults.ewcc: .*did you mean 'ewc'"):
        load_config("mini", ["method.defaults.ewcc.fisher_samples=5"])
    with pytest.raises(ConfigError, match="method.defaults.ewc.fisher_sampels"):
        load_config("mini", ["method.defaults.ewc.fisher_sampels=5"])
    with pytest.raises(ConfigError, match="method.defaults.ewc: expected a mapping"):
        load_config("mini", ["method.defaults.ewc=5"])
