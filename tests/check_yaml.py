"""SpeechBrain's yaml-vs-script consistency check (``tests/utils/check_yaml.py`` of a
SpeechBrain checkout, which its ``tests/consistency/test_yaml.py`` runs on every recipe row),
copied here because pip-installed SpeechBrain has no ``tests/`` package.

The logic of ``get_yaml_var``, ``detect_script_vars`` and ``check_yaml_vs_script`` is
SpeechBrain's, kept line for line (Apache-2.0; authors Mirco Ravanelli and Andreas Nautsch,
2022); only the run-option defaults come from whichever SpeechBrain is installed, and
``unused_yaml_vars`` returns the list that ``check_yaml_vs_script`` prints.
"""

import os
import re


def _run_opt_keys():
    """The names of SpeechBrain's run options (never reported as unused)."""
    try:  # SpeechBrain < 1.1
        from speechbrain.core import run_opt_defaults

        return list(run_opt_defaults.keys())
    except ImportError:
        from speechbrain.utils.run_opts import RunOptions

        return list(RunOptions().as_dict().keys())


def get_yaml_var(hparam_file):
    """Extracts from the input yaml file (hparams_file) the list of variables that
    should be used in the script file (sub-variables are not included)."""
    var_lst = []
    with open(hparam_file) as f:
        for line in f:
            # Avoid empty lists or comments - skip pretrainer definitions
            if (
                len(line) <= 1
                or line.startswith("#")
                or "speechbrain.utils.parameter_transfer.Pretrainer" in line
            ):
                continue

            # Remove trailing characters
            line = line.rstrip()

            # Check for variables (e.g., 'key:' or '!ref')
            if line.find(":") != -1 or line.find("!ref") != -1:
                var_name = line[: line.find(":")]
                # The variables to check are like "key:" (we do not need to check
                # subvariavles as " key:")
                if not (
                    var_name[0] == " " or var_name[0] == "\t" or "!!" in line or "!apply" in line
                ):
                    var_lst.append(var_name)
                # Check for the reference pattern
                # note: output_folder: !ref results/<experiment_name>/<seed> pattern
                if line.find("!ref") != -1:
                    # Check for 'annotation_list_to_check: [!ref <train_csv>, !ref <valid_csv>]'
                    for subline in line.split("<"):
                        sub_var = subline[: subline.find(">")]
                        # Check for 'models[generator]' pattern (dictionary reference)
                        dict_pos = sub_var.find("[")
                        if dict_pos != -1:
                            sub_var = sub_var[:dict_pos]
                        # Remove variables already used in yaml
                        if sub_var in var_lst:
                            var_lst.remove(sub_var)
    return var_lst


def detect_script_vars(script_file, var_lst):
    """Detects from the input script file (script_file) which of given variables (var_lst)
    are demanded."""
    var_types = [
        "hparams.",
        "modules.",
        'attr(self.hparams, "',
        'hparams.get("',
    ]
    detected_var = []
    with open(script_file) as f:
        for line in f:
            for var in var_lst:
                # The pattern can be ["key"] or ".key"
                if '["' + var + '"]' in line:
                    if var not in detected_var:
                        detected_var.append(var)
                        continue  # no need to go through the other cases for this var
                # case: hparams[f"{dataset}_annotation"] - only that structure at the moment
                re_match = re.search(r"\[f.\{.*\}(.*).\]", line)
                # case: getattr(self.hparams, f"{stage.name}_search".lower())
                if re_match is None:
                    re_match = re.search(r"self\.hparams, f\"\{.*\}(.*)\"", line)
                if re_match is not None:
                    if re_match.group(1) in var:
                        print(
                            f"\t\tWARNING: potential inconsistency {var} maybe used in "
                            f"{re_match.group(0)} (or not)."
                        )
                        if var not in detected_var:
                            detected_var.append(var)
                            continue

                # case: hparams[f"annotation_{dataset}"] - only that structure at the moment
                re_match = re.search(r"\[f.(.*)\{.*\}.\]", line)
                if re_match is not None:
                    if re_match.group(1) in var:
                        print(
                            f"\t\tWARNING: potential inconsistency {var} maybe used in "
                            f"{re_match.group(0)} (or not)."
                        )
                        if var not in detected_var:
                            detected_var.append(var)
                            continue

                # Chek var types
                for var_type in var_types:
                    if var_type + var in line:
                        if var not in detected_var:
                            detected_var.append(var)
                            continue
                # case: tea_enc_list.append(hparams['tea{}_enc'])
                re_var = re.search(r"\[.(.*){}(.*).\]", line)
                if re_var is not None:
                    re_var_pattern = re_var.group(1) + ".*" + re_var.group(2)
                    re_pattern = re.search(re_var_pattern, var)
                    if re_pattern is not None:
                        if re_pattern.group() == var:
                            detected_var.append(var)
                            continue
    return detected_var


def unused_yaml_vars(hparam_file, script_file):
    """The top-level yaml variables that the script never uses (SpeechBrain's rule)."""
    var_lst = get_yaml_var(hparam_file)
    detected_vars_train = detect_script_vars(script_file, var_lst)
    default_run_opt_keys = _run_opt_keys() + ["rescoring_lm_scale"]
    return sorted(set(var_lst) - set(detected_vars_train) - set(default_run_opt_keys))


def check_yaml_vs_script(hparam_file, script_file):
    """True when every variable declared in the yaml file is used in the script file;
    prints an error line for each one that is not."""
    print(f"Checking {hparam_file}...")
    if not os.path.exists(hparam_file):
        print(f"File {hparam_file} not found!")
        return False
    if not os.path.exists(script_file):
        print(f"File {script_file} not found!")
        return False
    unused_vars = unused_yaml_vars(hparam_file, script_file)
    for unused_var in unused_vars:
        print(f'\tERROR: variable "{unused_var}" not used in {script_file}!')
    return len(unused_vars) == 0
