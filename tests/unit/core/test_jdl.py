"""Tests for reading and writing DIRAC JDL."""

from __future__ import annotations

import re
import shlex
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from concordia.core.jdl import (
    Expression,
    JDLError,
    JDLValue,
    dirac_list_item_problem,
    job_jdl,
    parse_jdl,
    render_jdl,
)

E = Expression

SEED_JDL = """\
[
    Arguments = "jobDescription.xml -o LogLevel=INFO";
    CPUtime = 500;
    Executable = "dirac-jobexec";
    InputSandbox =
        {
            "/bin/hostname",
            "SB:ProductionSandboxSE|/SandBox/g/ghughes.cta_user/e9b/b34/e9bb34d0d7945deca7066e945b75fbdc.tar.bz2"
        };
    JobGroup = vo.cta.in2p3.fr;
    JobName = API;
    JobType = User;
    LogLevel = INFO;
    OutputSandbox =
        {
            Script1_CodeOutput.log,
            Script2_hostname.log,
            Script3_CodeOutput.log,
            std.err,
            std.out
        };
    Priority = 1;
    StdError = std.err;
    StdOutput = std.out;
]
"""

SEED_SANDBOX = (
    "SB:ProductionSandboxSE|/SandBox/g/ghughes.cta_user/e9b/b34/"
    "e9bb34d0d7945deca7066e945b75fbdc.tar.bz2"
)

SEED_VALUES: dict[str, JDLValue] = {
    "Arguments": "jobDescription.xml -o LogLevel=INFO",
    "CPUtime": 500,
    "Executable": "dirac-jobexec",
    "InputSandbox": ["/bin/hostname", SEED_SANDBOX],
    "JobGroup": E("vo.cta.in2p3.fr"),
    "JobName": E("API"),
    "JobType": E("User"),
    "LogLevel": E("INFO"),
    "OutputSandbox": [
        E("Script1_CodeOutput.log"),
        E("Script2_hostname.log"),
        E("Script3_CodeOutput.log"),
        E("std.err"),
        E("std.out"),
    ],
    "Priority": 1,
    "StdError": E("std.err"),
    "StdOutput": E("std.out"),
}


def typed(value: Any) -> Any:
    """Make equality type-sensitive: Expression("x") == "x" and True == 1 in plain Python."""
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [typed(item) for item in value]
    return (type(value).__name__, value)


def round_trip(attrs: dict[str, JDLValue]) -> dict[str, JDLValue]:
    return parse_jdl(render_jdl(attrs))


# --- round trips -------------------------------------------------------------------------


def test_round_trip_keeps_every_value_type() -> None:
    attrs: dict[str, JDLValue] = {
        "Str": "hello world",
        "Empty": "",
        "Unicode": "café ✓ 日本",
        "Tricky": 'say "hi" \\ C:\\dir\\ // not a comment # nor this /* nor */',
        "Int": 42,
        "Negative": -7,
        "Big": 10**30,
        "Float": 3.25,
        "Tiny": 1e-300,
        "Huge": -1.5e300,
        "True": True,
        "False": False,
        "Dotted": E("vo.cta.in2p3.fr"),
        "Requirements": E('other.Site == "LCG.CERN.ch" && Cores > 1'),
        "Call": E('member("x", other.Tags)'),
        "Mixed": ["a", 1, 2.5, True, E("std.out")],
        "NoItems": [],
    }
    assert typed(round_trip(attrs)) == typed(attrs)


def test_render_is_dirac_style_one_attribute_per_line() -> None:
    text = render_jdl({"Executable": "run.sh", "Files": ["a", E("b.log")], "CPUTime": 60})
    assert text == (
        '[\n    Executable = "run.sh";\n    Files = { "a", b.log };\n    CPUTime = 60;\n]'
    )


_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}(\.[A-Za-z0-9_]{1,4}){0,2}", fullmatch=True)
_plain_text = st.text(st.characters(min_codepoint=0x20, exclude_characters="\x7f"))
_identifiers = st.from_regex(
    r"[A-Za-z_][A-Za-z0-9_]{0,6}(\.[A-Za-z0-9_]{1,6}){0,3}", fullmatch=True
)
_expressions = st.one_of(
    _identifiers.filter(lambda s: s.lower() not in ("true", "false")),
    st.builds(
        lambda attr, text: f'other.{attr} == "{text}"',
        _identifiers,
        st.text(st.characters(min_codepoint=0x20, exclude_characters='\x7f"\\')),
    ),
).map(Expression)
_scalars = st.one_of(
    _plain_text,
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    _expressions,
)
_attrs = st.dictionaries(_names, st.one_of(_scalars, st.lists(_scalars, max_size=5)), max_size=6)


@given(_attrs.filter(lambda d: len({key.lower() for key in d}) == len(d)))
def test_any_valid_attributes_round_trip(attrs: dict[str, JDLValue]) -> None:
    assert typed(round_trip(attrs)) == typed(attrs)


# --- the seed's JDL ----------------------------------------------------------------------


def test_seed_jdl_parses_to_its_values() -> None:
    parsed = parse_jdl(SEED_JDL)
    assert typed(parsed) == typed(SEED_VALUES)
    assert list(parsed) == list(SEED_VALUES)
    assert isinstance(parsed["JobGroup"], Expression)
    assert not isinstance(parsed["Arguments"], Expression)


def test_seed_jdl_survives_render_and_parse() -> None:
    parsed = parse_jdl(SEED_JDL)
    assert typed(round_trip(parsed)) == typed(parsed)


def test_seed_jdl_with_windows_line_endings_parses_the_same() -> None:
    assert typed(parse_jdl(SEED_JDL.replace("\n", "\r\n"))) == typed(SEED_VALUES)


def test_one_line_form_without_brackets_parses_to_the_same_values() -> None:
    text = (
        'Arguments = "jobDescription.xml -o LogLevel=INFO"; CPUtime = 500; '
        'Executable = "dirac-jobexec"; '
        'InputSandbox = { "/bin/hostname", "SB:ProductionSandboxSE|/SandBox/x" }; '
        "JobGroup = vo.cta.in2p3.fr; JobName = API; JobType = User; LogLevel = INFO; "
        "OutputSandbox = { Script1_CodeOutput.log, Script2_hostname.log, "
        "Script3_CodeOutput.log, std.err, std.out }; Priority = 1; StdError = std.err; "
        "StdOutput = std.out;"
    )
    expected = dict(
        SEED_VALUES, InputSandbox=["/bin/hostname", "SB:ProductionSandboxSE|/SandBox/x"]
    )
    assert typed(parse_jdl(text)) == typed(expected)


def test_seed_printout_with_unclosed_input_sandbox_is_an_error_naming_the_line() -> None:
    broken = SEED_JDL.replace('.tar.bz2"\n        };\n', '.tar.bz2"\n')
    assert broken != SEED_JDL
    with pytest.raises(JDLError) as caught:
        parse_jdl(broken)
    assert (caught.value.line, caught.value.column) == (9, 5)  # where JobGroup starts
    assert "line 9" in str(caught.value)
    assert "line 6, column 9" in str(caught.value)  # where the unclosed '{' is


# --- what DIRAC writes --------------------------------------------------------------------

# A parametric job as DiracX 0.7.0 stores its second job (JobDB, after its own rewrite):
# the sequences' values under dotted names, a nested description, lists over lines.
DIRACX_STORED = """\
[
    Arguments = "1 y 1";
    CPUTime = 600;
    JobGroup = "g";
    JobID = 2;
    JobRequirements =
        [
            CPUTime = 600;
            Owner = "jane";
            UserPriority = 3;
        ];
    OutputSandbox =
        {
            "a*.txt",
            "std.out"
        };
    Parameter = 1;
    Parameter.A = 3;
    Parameter.B = "y";
    ParameterNumber = 1;
    Tags =
        {
            "t1",
            "t2"
        };
]"""


def test_a_jdl_as_diracx_stores_it_is_read_with_its_dotted_parameters() -> None:
    parsed = parse_jdl(DIRACX_STORED)
    assert parsed["Parameter.A"] == 3 and parsed["Parameter.B"] == "y"
    assert parsed["OutputSandbox"] == ["a*.txt", "std.out"]
    assert parsed["Tags"] == ["t1", "t2"]
    requirements = parsed["JobRequirements"]
    assert isinstance(requirements, Expression) and 'Owner = "jane"' in requirements
    assert typed(parse_jdl(render_jdl(parsed))) == typed(parsed)


def test_a_parametric_description_with_named_sequences_is_read_and_written_back() -> None:
    text = """[
        Executable = "run.sh";
        Arguments = "%(A)s %(B)s %n";
        Parameters = 2;
        ParameterStart.A = 1;
        ParameterStep.A = 2;
        ParameterFactor.A = 1.5;
        Parameters.B = { "x", "y" };
        Parameters.InputData = { "LFN:/cta/a.dat", "LFN:/cta/b.dat" };
    ]"""
    parsed = parse_jdl(text)
    assert parsed["ParameterStart.A"] == 1 and parsed["ParameterFactor.A"] == 1.5
    assert parsed["Parameters.B"] == ["x", "y"]
    assert parsed["Parameters.InputData"] == ["LFN:/cta/a.dat", "LFN:/cta/b.dat"]
    assert typed(parse_jdl(render_jdl(parsed))) == typed(parsed)


def test_dotted_names_still_ignore_case_and_must_be_names() -> None:
    with pytest.raises(JDLError, match="duplicate attribute"):
        parse_jdl("Parameters.A = 1; parameters.a = 2;")
    for bad in ("Parameters.", "Parameters..A", ".A", "Parameters.A-B"):
        with pytest.raises(JDLError, match="attribute name"):
            render_jdl({bad: 1})


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_a_line_break_inside_a_string_is_dropped_as_dirac_drops_it(newline: str) -> None:
    # DIRAC keeps what surrounds the break (here the next line's indentation).
    text = f'[\n    Arguments = "a{newline}    b";\n    Files = {{ "x{newline}y", "z" }};\n]'
    assert parse_jdl(text) == {"Arguments": "a    b", "Files": ["xy", "z"]}


def test_an_unclosed_string_is_still_an_error_where_it_opens() -> None:
    with pytest.raises(JDLError, match="unterminated string") as caught:
        parse_jdl('A = 1;\nB = "abc;\nC = 2;\n')
    assert (caught.value.line, caught.value.column) == (2, 5)


@pytest.mark.parametrize("item", ["result.txt", "data/*.root", "out_?.log", "run_1?.txt"])
def test_plain_globs_travel_in_dirac_lists(item: str) -> None:
    assert dirac_list_item_problem(item) is None


@pytest.mark.parametrize(
    ("item", "bad"),
    [
        ("my file.txt", "' '"),
        ("a,b", "','"),
        ('a"b', "'\"'"),
        ("a\\b", "'\\\\'"),
        ("a;b", "';'"),
        ("run[0-9].txt", "'['"),
        ("*.{root,log}", "'{'"),
        ("out_%j.txt", "'%j'"),
        ("tab\there", "'\\t'"),
    ],
)
def test_what_dirac_lists_cannot_carry_is_named(item: str, bad: str) -> None:
    problem = dirac_list_item_problem(item)
    assert problem is not None and problem.startswith(bad), problem
    assert "DIRAC" in problem


def test_an_empty_list_item_is_refused() -> None:
    assert dirac_list_item_problem("") == "an empty item is dropped by DIRAC"


# --- job_jdl -----------------------------------------------------------------------------


def test_parametric_job_renders_and_parses() -> None:
    text = job_jdl(
        executable="run.sh",
        arguments="run.sh %s",
        job_name="scan",
        cpu_time=3600,
        parameters=3,
        parameter_start=100,
        parameter_step=1,
    )
    parsed = parse_jdl(text)
    assert parsed["Parameters"] == 3
    assert parsed["ParameterStart"] == 100
    assert parsed["ParameterStep"] == 1
    assert parsed["Arguments"] == "run.sh %s"
    assert list(parsed)[-3:] == ["Parameters", "ParameterStart", "ParameterStep"]


def test_parametric_job_with_a_list_of_values() -> None:
    parsed = parse_jdl(
        job_jdl(executable="x", job_name="n", cpu_time=1, parameters=["a b", 2, 0.5])
    )
    assert typed(parsed["Parameters"]) == typed(["a b", 2, 0.5])


def test_parameter_start_without_a_count_is_refused() -> None:
    with pytest.raises(JDLError):
        job_jdl(executable="x", job_name="n", cpu_time=1, parameters=["a"], parameter_start=1)


def test_job_jdl_has_every_attribute_in_a_stable_order() -> None:
    text = job_jdl(
        executable="app.sh",
        arguments=["--input", "my file.txt", "it's", "$HOME", ""],
        job_name="job-1",
        job_group="cta",
        input_sandbox=["app.sh", "LFN:/vo/data.txt"],
        output_sandbox=["out.log"],
        cpu_time=600,
        priority=3,
        site=["LCG.CERN.ch", "LCG.IN2P3.fr"],
        tags=["4Processors"],
        extra={"JobType": E("User")},
    )
    parsed = parse_jdl(text)
    assert list(parsed) == [
        "Executable", "Arguments", "JobName", "JobGroup", "InputSandbox", "OutputSandbox",
        "StdOutput", "StdError", "CPUTime", "Priority", "Site", "Tags", "JobType",
    ]  # fmt: skip
    assert parsed["Site"] == ["LCG.CERN.ch", "LCG.IN2P3.fr"]
    assert parsed["StdOutput"] == "std.out"
    assert typed(parsed["JobType"]) == typed(E("User"))
    # The shell DIRAC runs must see exactly the words we passed.
    arguments = parsed["Arguments"]
    assert isinstance(arguments, str)
    assert shlex.split(arguments) == ["--input", "my file.txt", "it's", "$HOME", ""]


def test_job_jdl_leaves_out_empty_optional_attributes() -> None:
    parsed = parse_jdl(job_jdl(executable="app.sh", job_name="j", cpu_time=60, site="LCG.X"))
    assert list(parsed) == [
        "Executable", "JobName", "StdOutput", "StdError", "CPUTime", "Priority", "Site",
    ]  # fmt: skip
    assert parsed["Site"] == "LCG.X"


def test_job_jdl_refuses_extra_that_overrides_a_generated_attribute() -> None:
    with pytest.raises(JDLError, match="cputime"):
        job_jdl(executable="x", job_name="n", cpu_time=1, extra={"cputime": 5})


@pytest.mark.parametrize("cpu_time", [0, -1, True])
def test_job_jdl_refuses_a_cpu_time_that_is_not_positive(cpu_time: int) -> None:
    with pytest.raises(JDLError):
        job_jdl(executable="x", job_name="n", cpu_time=cpu_time)


# --- escaping and injection --------------------------------------------------------------


def test_quote_injection_stays_inside_its_string() -> None:
    evil = 'x"; Executable = "/bin/evil'
    text = render_jdl({"Arguments": evil})
    assert text.count("\n") == 2  # still one attribute line
    assert parse_jdl(text) == {"Arguments": evil}


@pytest.mark.parametrize(
    "value", ['"', "\\", '\\"', "end\\", 'a\\"; B = "c', "\\n is not a newline"]
)
def test_quotes_and_backslashes_round_trip(value: str) -> None:
    assert parse_jdl(render_jdl({"A": value, "L": [value]})) == {"A": value, "L": [value]}


@pytest.mark.parametrize("char", ["\n", "\r", "\x00", "\t", "\x1b", "\x7f"])
def test_control_characters_in_strings_are_refused(char: str) -> None:
    with pytest.raises(JDLError, match="inject"):
        render_jdl({"Arguments": f"a{char}Executable = evil"})
    with pytest.raises(JDLError, match="inject"):
        render_jdl({"InputSandbox": ["ok", f"a{char}b"]})


@pytest.mark.parametrize(
    "expression",
    [
        'x; Executable = "/bin/evil"',
        "x\nExecutable = evil",
        "a // hidden",
        "a /* hidden */",
        "(unclosed",
        "",
        " padded ",
        "true",
        "12",
        '"just a string"',
        "a\x00b",
    ],
)
def test_expressions_that_would_not_read_back_as_themselves_are_refused(
    expression: str,
) -> None:
    with pytest.raises(JDLError, match="expression"):
        render_jdl({"Requirements": E(expression)})


def test_an_expression_with_a_comma_is_fine_alone_but_not_in_a_list() -> None:
    assert parse_jdl(render_jdl({"A": E("a, b")})) == {"A": E("a, b")}
    with pytest.raises(JDLError):
        render_jdl({"A": [E("a, b")]})


@pytest.mark.parametrize(
    "name", ["A = 1; B", "Exec utable", "1abc", "", "a\n", "Name;", "a-b", "é"]
)
def test_bad_attribute_names_are_refused(name: str) -> None:
    with pytest.raises(JDLError, match="attribute name"):
        render_jdl({name: 1})


def test_attribute_names_differing_only_in_case_are_refused() -> None:
    with pytest.raises(JDLError, match="twice"):
        render_jdl({"CPUTime": 1, "CPUtime": 2})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_floats_are_refused(value: float) -> None:
    with pytest.raises(JDLError):
        render_jdl({"A": value})


@pytest.mark.parametrize("value", [None, {"a": 1}, ("a",), [["nested"]], b"bytes"])
def test_unsupported_types_are_refused(value: Any) -> None:
    with pytest.raises(JDLError):
        render_jdl({"A": value})


# --- parsing details ---------------------------------------------------------------------


def test_comments_are_ignored_but_not_inside_strings() -> None:
    text = """
    // a line comment
    # a hash comment at the start of a line
    [
        /* a block
           comment */
        Url = "http://example.org/#anchor";  // trailing comment
        Note = "/* kept */ # kept";
          # indented hash comment
        Requirements = other.Site == "X" /* why */ && Cores > 1;
        Files = { "a", /* skip */ b.log // skip
        };
    ]
    """
    assert typed(parse_jdl(text)) == typed(
        {
            "Url": "http://example.org/#anchor",
            "Note": "/* kept */ # kept",
            "Requirements": E('other.Site == "X" && Cores > 1'),
            "Files": ["a", E("b.log")],
        }
    )


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("-5", -5),
        ("+7", 7),
        ("1e3", 1000.0),
        ("-2.5E-3", -0.0025),
        (".5", 0.5),
        ("TRUE", True),
        ("false", False),
        ("1.2.3", E("1.2.3")),
        ("-x", E("-x")),
        ('"a\\tb\\nc"', "a\tb\nc"),
        ('"keep \\q"', "keep \\q"),
    ],
)
def test_scalar_values_are_read_with_their_type(text: str, value: JDLValue) -> None:
    assert typed(parse_jdl(f"A = {text};")) == typed({"A": value})


def test_lists_may_be_empty_span_lines_and_end_with_a_comma() -> None:
    parsed = parse_jdl('[ A = {}; B = {\n  "x",\n  2,\n}; C = { member("a", b), c } ]')
    assert typed(parsed) == typed({"A": [], "B": ["x", 2], "C": [E('member("a", b)'), E("c")]})


def test_last_semicolon_is_optional_and_names_keep_their_case() -> None:
    assert parse_jdl("[ cpuTime = 5 ]") == {"cpuTime": 5}
    assert parse_jdl("A = 1; B = x") == {"A": 1, "B": E("x")}
    assert parse_jdl("  \n") == {}


@pytest.mark.parametrize(
    ("text", "line", "column", "message"),
    [
        ('A = 1;\nB = "abc;\n', 2, 5, "unterminated string"),
        ('A = { "a", "b";', 1, 15, "expected ',' or '}'"),
        ('A = {\n "a",\n', 1, 5, "never closed"),
        ("A = (x;\n", 1, 5, "never closed"),
        ("A = x);", 1, 6, "unexpected ')'"),
        ("A = 1;\nB 2;", 2, 3, "expected '='"),
        ("A = ;", 1, 5, "empty value"),
        ('A = { "a", , "b" };', 1, 12, "empty value"),
        ("A = x\nB = y;", 2, 3, "missing ';'"),
        ("A = 1;\n  a = 2;", 2, 3, "duplicate attribute"),
        ("[ A = 1;", 1, 9, "missing ']'"),
        ("[ A = 1; ] B = 2;", 1, 12, "after the closing"),
        ("A = 1; /* open", 1, 8, "unterminated /*"),
        ("1A = 2;", 1, 1, "attribute name"),
        ("A = {1} x;", 1, 9, "expected ';'"),
        ("A = 1e999;", 1, 5, "out of range"),
    ],
)
def test_errors_name_line_and_column(text: str, line: int, column: int, message: str) -> None:
    with pytest.raises(JDLError, match=re.escape(message)) as caught:
        parse_jdl(text)
    assert (caught.value.line, caught.value.column) == (line, column)
    assert f"line {line}, column {column}" in str(caught.value)


# --- anything at all: read back exactly, or refused with a JDLError -----------------------

# Any code point, lone surrogates included (JSON and file names can carry them).
_any_text = st.text(st.one_of(st.characters(), st.integers(0xD800, 0xDFFF).map(chr)))


@settings(max_examples=500)
@given(value=_any_text, neighbour=_any_text)
def test_any_string_reads_back_as_itself_or_is_refused(value: str, neighbour: str) -> None:
    attrs: dict[str, JDLValue] = {"Arguments": value, "Files": [neighbour, value], "After": 1}
    try:
        text = render_jdl(attrs)
    except JDLError:
        assert re.search(r"[\x00-\x1f\x7f]", value + neighbour)  # only control characters
        return
    assert typed(parse_jdl(text)) == typed(attrs)  # and never an attribute more


@settings(max_examples=500)
@given(expression=_any_text, in_list=st.booleans())
def test_any_expression_reads_back_as_itself_or_is_refused(expression: str, in_list: bool) -> None:
    value: JDLValue = [E(expression)] if in_list else E(expression)
    attrs: dict[str, JDLValue] = {"Requirements": value, "After": "x"}
    try:
        text = render_jdl(attrs)
    except JDLError as exc:
        assert "expression" in str(exc)
        return
    assert typed(parse_jdl(text)) == typed(attrs)


_jdl_alphabet = st.sampled_from(list('[]{}();=,"\\/*#\n\r\t -+.eE0123456789abcTRUEfalse_'))


@settings(max_examples=1000)
@given(text=st.one_of(_any_text, st.text(_jdl_alphabet, max_size=60)))
def test_any_text_parses_or_is_a_jdl_error_and_what_parses_renders_the_same(text: str) -> None:
    try:
        parsed = parse_jdl(text)
    except JDLError:
        return
    try:
        rendered = render_jdl(parsed)
    except JDLError:
        return  # e.g. a string with "\n" escaped in it: it has no safe form to write
    assert typed(parse_jdl(rendered)) == typed(parsed)


@settings(max_examples=300)
@given(arguments=st.lists(_any_text, max_size=5))
def test_job_arguments_reach_the_shell_as_the_same_words_or_are_refused(
    arguments: list[str],
) -> None:
    try:
        text = job_jdl(executable="run.sh", arguments=arguments, job_name="j", cpu_time=60)
    except JDLError:
        assert any(re.search(r"[\x00-\x1f\x7f]", word) for word in arguments)
        return
    parsed = parse_jdl(text).get("Arguments", "")
    assert isinstance(parsed, str)
    assert shlex.split(parsed) == arguments
