//! `upkeep completions SHELL`: clap's completion script, and for bash the ids of the
//! trusted catalog where a command takes update ids.

use clap::CommandFactory;

/// Added to the bash completion script: where a command takes update ids, the ids and KB
/// ids of the trusted metadata (`upkeep __ids`, offline, with the line's own
/// `--state-dir` and `--config`) are offered beside the options.
const BASH_IDS: &str = r#"
_upkeep_ids() {
    _upkeep "$@"
    local i w cur="${COMP_WORDS[COMP_CWORD]}" here=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${COMP_WORDS[i]}" in
            --state-dir|--config) here+=("${COMP_WORDS[i]}" "${COMP_WORDS[i+1]}") ;;
        esac
    done
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${COMP_WORDS[i]}"
        case "$w" in
            show|download|install|uninstall|hide|unhide|verify)
                if [[ "$cur" != -* ]]; then
                    COMPREPLY+=($(compgen -W "$(upkeep __ids "${here[@]}" 2>/dev/null)" -- "$cur"))
                fi
                return 0 ;;
        esac
    done
}
if [[ "${BASH_VERSINFO[0]}" -eq 4 && "${BASH_VERSINFO[1]}" -ge 4 || "${BASH_VERSINFO[0]}" -gt 4 ]]; then
    complete -F _upkeep_ids -o nosort -o bashdefault -o default upkeep
else
    complete -F _upkeep_ids -o bashdefault -o default upkeep
fi
"#;

/// Prints the completion script for `shell`.
pub fn print(shell: clap_complete::Shell) {
    clap_complete::generate(
        shell,
        &mut crate::Cli::command(),
        "upkeep",
        &mut std::io::stdout(),
    );
    if shell == clap_complete::Shell::Bash {
        print!("{BASH_IDS}");
    }
}
