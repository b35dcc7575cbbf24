"""Grading sampled answers against references: what each grader extracts, and when it agrees."""

from __future__ import annotations

import concurrent.futures
import random

import pytest

from vlmbatch.schema.grading import (
    GRADERS,
    Grade,
    GraderName,
    extract_boxed,
    extract_choice,
    extract_number,
    grade,
    grader_version,
    normalize_exact,
    normalize_reference,
    numbers_agree,
    parse_options,
    symbolic,
    symbolically_equal,
)
from vlmbatch.schema.grading.symbolic import MATH_VERIFY_VERSION, MAX_SYMBOLIC_CHARS

# --- choice ----------------------------------------------------------------------------------------------

CHOICE_CASES = [
    # (answer, reference, extracted, correct)
    pytest.param("B", "B", "B", True, id="bare_letter"),
    pytest.param("(B)", "B", "B", True, id="parenthesized_letter"),
    pytest.param("B)", "B", "B", True, id="letter_with_closing_paren"),
    pytest.param("B.", "B", "B", True, id="letter_with_period"),
    pytest.param("**B**", "B", "B", True, id="markdown_bold_letter"),
    pytest.param("b", "B", "B", True, id="lone_lowercase_letter_is_unambiguous"),
    pytest.param("The answer is C", "C", "C", True, id="answer_is_statement"),
    pytest.param("Answer: D", "D", "D", True, id="answer_colon_label"),
    pytest.param("**Answer:** D", "D", "D", True, id="bold_answer_label"),
    pytest.param("answer is (e)", "E", "E", True, id="lowercase_letter_in_parens_after_statement"),
    pytest.param("\\boxed{C}", "C", "C", True, id="boxed_letter"),
    pytest.param("So the final answer is $\\boxed{\\text{(C)}}$.", "C", "C", True, id="boxed_text_letter_in_math"),
    pytest.param("Option B", "B", "B", True, id="option_mention"),
    pytest.param("I choose A", "A", "A", True, id="i_choose_statement"),
    pytest.param("I'd go with B.", "B", "B", True, id="i_would_go_with_statement"),
    pytest.param("The correct option is (B).", "B", "B", True, id="correct_option_is_statement"),
    pytest.param("答案是C", "C", "C", True, id="chinese_answer_statement"),
    pytest.param("\uff08\uff23\uff09", "C", "C", True, id="full_width_parenthesized_letter"),
    pytest.param("A is wrong, B is wrong, the answer is D", "D", "D", True, id="statement_beats_earlier_letters"),
    pytest.param("The answer is A. On reflection, the answer is C.", "C", "C", True, id="last_statement_wins"),
    pytest.param("The answer is B, not A", "A", "B", False, id="negated_letter_after_statement_ignored"),
    pytest.param("Both A and B look plausible; answer: E", "E", "E", True, id="capital_inside_word_is_not_a_letter"),
    pytest.param("Looking at the image, the bird is blue.\n\n**C**", "C", "C", True, id="bare_letter_on_last_line"),
    pytest.param("C. blue, because the sky reflects it", "C", "C", True, id="letter_opening_the_answer"),
    pytest.param("(B) because the sky is blue", "B", "B", True, id="parenthesized_letter_opening_the_answer"),
    pytest.param("I think (C) fits best.", "C", "C", True, id="single_parenthesized_mention"),
    pytest.param("A cat sits on a mat", "A", None, False, id="article_a_in_prose_is_not_an_answer"),
    pytest.param("The answer is a cat", "A", None, False, id="lowercase_article_after_statement_is_not_an_answer"),
    pytest.param("A. cat\nB. dog\nC. bird", "A", None, False, id="list_of_options_is_not_an_answer"),
    pytest.param("Options (A) and (B) are both wrong", "A", None, False, id="several_mentions_are_ambiguous"),
    pytest.param("The answer is not A", "A", None, False, id="negated_statement_gives_nothing"),
    pytest.param("", "A", None, False, id="empty_answer"),
    pytest.param("None", "A", None, False, id="none_like_answer"),
    pytest.param("The answer is B", "(B)", "B", True, id="reference_in_parens"),
    pytest.param("The answer is B", "C. blue", "B", False, id="reference_with_option_text"),
    pytest.param("Answer: c", "c", "C", True, id="lowercase_reference_and_answer"),
    pytest.param("\\boxed{42}\nThe answer is D", "D", "D", True, id="non_letter_box_falls_through_to_statement"),
]


@pytest.mark.parametrize(("answer", "reference", "extracted", "correct"), CHOICE_CASES)
def test_choice_grader(answer: str, reference: str, extracted: str | None, correct: bool) -> None:
    assert grade("choice", answer, reference) == Grade(extracted=extracted, correct=correct)


# --- numeric ---------------------------------------------------------------------------------------------

NUMERIC_CASES = [
    pytest.param("12", "12", "12", True, id="plain_integer"),
    pytest.param("12 cm", "12", "12", True, id="unit_is_stripped"),
    pytest.param("3.0 kg", "3", "3.0", True, id="trailing_zero_decimal_equals_integer"),
    pytest.param("$1,234.50", "1234.5", "1234.50", True, id="currency_and_thousands_separator"),
    pytest.param("1,234,567", "1234567", "1234567", True, id="several_thousands_groups"),
    pytest.param("1, 2, 3", "3", "3", True, id="comma_space_list_is_not_one_number"),
    pytest.param("1,2,3", "123", "3", False, id="comma_list_without_spaces_is_not_one_number"),
    pytest.param("45%", "45", "45", True, id="percent_sign_dropped"),
    # math-verify: 45% is 0.45 (this grader used to call it wrong; "45" is still right too).
    pytest.param("45%", "0.45", "45", True, id="percent_is_a_fraction_of_one"),
    pytest.param("3/4", "0.75", "3/4", True, id="slash_fraction"),
    pytest.param("\\frac{3}{4}", "0.75", "3/4", True, id="latex_fraction"),
    pytest.param("\\dfrac12", "0.5", "1/2", True, id="latex_short_fraction"),
    pytest.param("-1/2", "-0.5", "-1/2", True, id="negative_fraction"),
    pytest.param("$-\\frac{1}{2}$", "-1/2", "-1/2", True, id="negative_latex_fraction"),
    pytest.param("The temperature is -7 degrees.", "-7", "-7", True, id="negative_number"),
    pytest.param("\u22127", "-7", "-7", True, id="unicode_minus_sign"),
    pytest.param("5-3=2", "2", "2", True, id="subtraction_is_not_a_sign"),
    pytest.param("1.5e3", "1500", "1.5e3", True, id="scientific_notation"),
    pytest.param("3 \\times 10^{8} m/s", "300000000", "3e8", True, id="times_ten_to_the_power"),
    pytest.param("The area is 12 cm^2", "12", "12", True, id="unit_exponent_is_not_the_answer"),
    pytest.param("First 3 apples, then 4 more, so 7 in total", "7", "7", True, id="final_number_in_text"),
    pytest.param("The answer is 12 cm, that is 120 mm.", "12", "12", True, id="first_number_after_answer_statement"),
    pytest.param("I estimate 40, but \\boxed{42}. Check: 41", "42", "42", True, id="boxed_number_beats_later_ones"),
    pytest.param("\\boxed{x = 5}", "5", "5", True, id="number_inside_boxed_equation"),
    pytest.param("\\boxed{\\text{none}} though 3 appears", "3", None, False, id="box_without_number_gives_nothing"),
    pytest.param("0.3333333", "1/3", "0.3333333", True, id="within_relative_tolerance"),
    pytest.param("0.333", "1/3", "0.333", False, id="outside_relative_tolerance"),
    pytest.param("0", "0", "0", True, id="zero_matches_zero"),
    pytest.param("1{,}000", "1000", "1000", True, id="latex_thousands_separator"),
    pytest.param("\u0663", "3", "3", True, id="arabic_indic_digit"),
    pytest.param("\uff11\uff12", "12", "12", True, id="full_width_digits"),
    pytest.param("version v2", "2", None, False, id="digits_glued_to_a_word_are_not_numbers"),
    pytest.param("\\frac{1}{0}", "0", None, False, id="division_by_zero_is_no_number"),
    pytest.param("twelve", "12", None, False, id="number_words_are_not_read"),
    pytest.param("", "12", None, False, id="empty_answer"),
    pytest.param("答案是12个", "12", "12", True, id="chinese_answer_statement"),
    pytest.param("12", "12 cm", "12", True, id="reference_with_unit"),
    pytest.param("1234.5", "$1,234.50", "1234.5", True, id="reference_with_currency"),
    # math-verify, on the stated final answer (the number extracted is still the one we read).
    pytest.param("The answer is $\\frac{\\sqrt{2}}{2}$", "0.70710678", "2", True, id="mv_root_against_decimal"),
    pytest.param("So the side is $2\\sqrt{2}$", "\\sqrt{8}", "2", True, id="mv_equal_roots"),
    pytest.param("So the side is $2\\sqrt{3}$", "\\sqrt{8}", "3", False, id="mv_different_roots"),
    pytest.param("The answer is \\frac{1}{2}.", "0.5", "1/2", True, id="mv_fraction_against_decimal"),
    pytest.param("The answer is $\\pi/2$", "1.5707963", "2", True, id="mv_pi_over_two"),
]


@pytest.mark.parametrize(("answer", "reference", "extracted", "correct"), NUMERIC_CASES)
def test_numeric_grader(answer: str, reference: str, extracted: str | None, correct: bool) -> None:
    assert grade("numeric", answer, reference) == Grade(extracted=extracted, correct=correct)


def test_numeric_tolerances_are_parameters() -> None:
    assert grade("numeric", "3.14", "3.14159", rel_tol=1e-3).correct is True
    assert grade("numeric", "3.14", "3.14159").correct is False
    assert grade("numeric", "0.0001", "0", abs_tol=1e-3).correct is True


def test_numbers_agree_reads_both_sides_like_the_grader() -> None:
    assert numbers_agree("about $1,234.50 in total", "1234.5")
    assert not numbers_agree("no number here", "1")


# --- exact -----------------------------------------------------------------------------------------------

EXACT_CASES = [
    pytest.param("blue", "blue", "blue", True, id="identical"),
    pytest.param("Blue", "blue", "blue", True, id="case_folded"),
    pytest.param("  blue \n", "blue", "blue", True, id="surrounding_whitespace"),
    pytest.param("blue.", "blue", "blue", True, id="trailing_period"),
    pytest.param("blue!?", "blue", "blue", True, id="trailing_punctuation_run"),
    pytest.param('"blue"', "blue", "blue", True, id="double_quotes"),
    pytest.param("\u201cblue\u201d.", "blue", "blue", True, id="curly_quotes_then_period"),
    pytest.param("**blue**", "blue", "blue", True, id="markdown_bold"),
    pytest.param("The Eiffel  Tower", "eiffel tower", "eiffel tower", True, id="leading_article_and_inner_spaces"),
    pytest.param("an apple", "apple", "apple", True, id="leading_article_an"),
    pytest.param("Answer: Paris", "Paris", "paris", True, id="answer_label"),
    pytest.param("A", "a", "a", True, id="lone_letter_a_is_not_an_article"),
    pytest.param("the blue one", "blue", "blue one", False, id="extra_words_do_not_match"),
    pytest.param("blue, not red", "blue", "blue, not red", False, id="inner_punctuation_kept"),
    pytest.param("\uff22\uff4c\uff55\uff45", "blue", "blue", True, id="full_width_letters"),
    pytest.param("None", "none", "none", True, id="none_is_just_a_word"),
    pytest.param("  .  ", "blue", None, False, id="nothing_left_after_normalizing"),
]


@pytest.mark.parametrize(("answer", "reference", "extracted", "correct"), EXACT_CASES)
def test_exact_grader(answer: str, reference: str, extracted: str | None, correct: bool) -> None:
    assert grade("exact", answer, reference) == Grade(extracted=extracted, correct=correct)


def test_normalize_exact_strips_only_leading_articles() -> None:
    assert normalize_exact("The cat and the hat.") == "cat and the hat"


# --- boxed -----------------------------------------------------------------------------------------------

BOXED_CASES = [
    pytest.param("so \\boxed{42}", "42", "42", True, id="boxed_integer"),
    pytest.param("\\boxed{\\frac{1}{2}}", "0.5", "\\frac{1}{2}", True, id="nested_braces_compared_numerically"),
    pytest.param("\\boxed{0.5}", "\\frac{1}{2}", "0.5", True, id="latex_reference_compared_numerically"),
    pytest.param("\\boxed{12 \\text{ cm}}", "12", "12 \\text{ cm}", True, id="units_around_a_lone_number"),
    pytest.param("\\boxed{45\\%}", "45", "45\\%", True, id="latex_percent"),
    pytest.param("\\boxed{x = 5}", "5", "x = 5", True, id="named_value"),
    pytest.param("\\boxed{\\sqrt{2}}", "2", "\\sqrt{2}", False, id="square_root_is_not_its_radicand"),
    pytest.param("\\boxed{2^{10}}", "10", "2^{10}", False, id="power_is_not_its_exponent"),
    pytest.param("\\boxed{(1, 2)}", "(1,2)", "(1, 2)", True, id="tuple_compared_as_text_ignoring_spaces"),
    pytest.param("\\boxed{(1, 2)}", "2", "(1, 2)", False, id="tuple_is_not_its_last_number"),
    pytest.param("\\boxed{\\text{Blue}}", "blue", "\\text{Blue}", True, id="text_wrapper_and_case"),
    pytest.param("\\fbox{7}", "7", "7", True, id="fbox"),
    pytest.param("\\boxed{3} first, then \\boxed{4}", "4", "4", True, id="last_box_wins"),
    pytest.param("\\boxed{4} and then \\boxed{5", "4", None, False, id="unclosed_last_box_gives_nothing"),
    pytest.param("\\boxed{}", "4", None, False, id="empty_box"),
    pytest.param("the answer is 4", "4", None, False, id="no_box"),
    pytest.param("\\boxed{\\{1, 2\\}}", "\\{1,2\\}", "\\{1, 2\\}", True, id="escaped_braces_do_not_count"),
    pytest.param("\\boxed{4}", "\\boxed{4}", "4", True, id="boxed_reference"),
    pytest.param("\\boxed{1/x}", "1", "1/x", False, id="expression_is_not_its_number"),
    # math-verify: symbolic equivalence of what our extraction found in the last box.
    pytest.param("\\boxed{\\frac{1}{2}}", "0.5", "\\frac{1}{2}", True, id="mv_fraction_vs_decimal"),
    pytest.param("\\boxed{\\sqrt{2}/2}", "\\frac{\\sqrt2}{2}", "\\sqrt{2}/2", True, id="mv_root_over_two"),
    pytest.param(
        "\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", True, id="mv_rationalized"
    ),
    pytest.param("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", "2\\sqrt{2}", True, id="mv_simplified_root"),
    pytest.param("\\boxed{x^2+2x+1}", "(x+1)^2", "x^2+2x+1", True, id="mv_expanded_polynomial"),
    pytest.param("\\boxed{x^2+1}", "(x+1)^2", "x^2+1", False, id="mv_different_polynomial"),
    pytest.param("\\boxed{(1, 2]}", "\\left(1,2\\right]", "(1, 2]", True, id="mv_half_open_interval"),
    pytest.param("\\boxed{[1, 2)}", "(1,2]", "[1, 2)", False, id="mv_interval_ends_matter"),
    pytest.param("\\boxed{x \\in (0, \\infty)}", "(0,\\infty)", "x \\in (0, \\infty)", True, id="mv_membership"),
    pytest.param(
        "\\boxed{(-\\infty, 3) \\cup (5, \\infty)}",
        "(5,\\infty)\\cup(-\\infty,3)",
        "(-\\infty, 3) \\cup (5, \\infty)",
        True,
        id="mv_union_in_any_order",
    ),
    pytest.param("\\boxed{\\{3, 1, 2\\}}", "\\{1,2,3\\}", "\\{3, 1, 2\\}", True, id="mv_set_in_any_order"),
    pytest.param("\\boxed{\\{1, 3\\}}", "\\{1,2\\}", "\\{1, 3\\}", False, id="mv_different_sets"),
    pytest.param("\\boxed{\\frac{3}{2}}", "1.5", "\\frac{3}{2}", True, id="mv_improper_fraction"),
]


@pytest.mark.parametrize(("answer", "reference", "extracted", "correct"), BOXED_CASES)
def test_boxed_grader(answer: str, reference: str, extracted: str | None, correct: bool) -> None:
    assert grade("boxed", answer, reference) == Grade(extracted=extracted, correct=correct)


@pytest.mark.parametrize(
    ("text", "content"),
    [
        pytest.param("\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{1}{\\sqrt{2}}", id="deeply_nested"),
        pytest.param("\\boxed { 5 }", "5", id="space_before_brace_and_inside"),
        pytest.param("\\boxed{a}}}}", "a", id="extra_closing_braces_after"),
        pytest.param("}{\\boxed{", None, id="unbalanced_only"),
    ],
)
def test_extract_boxed(text: str, content: str | None) -> None:
    assert extract_boxed(text) == content


def test_a_runaway_symbolic_comparison_is_cut_off_and_counts_as_not_equal() -> None:
    # sympy would compute a ten-billion-digit integer here; the child process is killed instead.
    assert grade("boxed", "\\boxed{10^{10^{10}}}", "1") == Grade(extracted="10^{10^{10}}", correct=False)
    assert grade("boxed", "\\boxed{\\frac{1}{2}}", "0.5").correct is True  # the pool works on afterwards


def test_math_verify_grades_on_worker_threads() -> None:
    # Its signal-based timeouts would raise off the main thread; ours are a child process's.
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as threads:
        verdicts = list(
            threads.map(lambda pair: symbolically_equal(*pair), [("\\sqrt{2}/2", "\\frac{\\sqrt2}{2}")] * 8)
        )
    assert verdicts == [True] * 8


def test_without_a_child_process_the_comparison_is_not_shown_equal(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pool() -> None:
        raise OSError("no process can be started")

    monkeypatch.setattr(symbolic, "_process_pool", no_pool)
    assert symbolically_equal("\\sqrt{2}/2", "\\frac{\\sqrt2}{2}") is False
    # Our own comparison still grades: 1/2 and 0.5 are equal numbers without math-verify.
    assert grade("boxed", "\\boxed{\\frac{1}{2}}", "0.5").correct is True


def test_overlong_answers_are_not_compared_symbolically() -> None:
    long = "1+" * (MAX_SYMBOLIC_CHARS // 2) + "1"
    assert symbolically_equal(long, str(MAX_SYMBOLIC_CHARS // 2 + 1)) is False
    assert symbolically_equal("1+1", "2") is True


def test_the_grader_version_names_math_verify_where_it_takes_part() -> None:
    assert grader_version("boxed").endswith(f"math-verify {MATH_VERIFY_VERSION}")
    assert grader_version("numeric") == grader_version("boxed")
    assert "math-verify" not in grader_version("choice") and grader_version("exact").startswith("vlmbatch ")


# --- choice with an options column (MMMU) -------------------------------------------------------------------

CARS = ["blue car", "red car", "green truck"]
OPTION_CASES = [
    # (answer, reference, options, extracted, correct)
    pytest.param("The answer is the red car.", "B", CARS, "B", True, id="option_text_in_statement"),
    pytest.param("Red car", "B", CARS, "B", True, id="option_text_alone"),
    pytest.param("It is clearly a\n**green truck**", "C", CARS, "C", True, id="option_text_on_last_line"),
    pytest.param("\\boxed{\\text{blue car}}", "B", CARS, "A", False, id="option_text_in_box"),
    pytest.param("B", "red car", CARS, "B", True, id="reference_as_option_text"),
    pytest.param("The answer is (B).", "B", CARS, "B", True, id="letters_still_win"),
    pytest.param("The answer is a yellow bus", "B", CARS, None, False, id="text_of_no_option"),
    pytest.param("The answer is H", "H", list("123456789"), "H", True, id="nine_options_have_nine_letters"),
    pytest.param("The answer is 8", "H", list("123456789"), "H", True, id="numeric_option_text"),
    pytest.param("cat", "A", ["cat", "cat"], None, False, id="duplicate_options_are_ambiguous"),
]


@pytest.mark.parametrize(("answer", "reference", "options", "extracted", "correct"), OPTION_CASES)
def test_choice_grader_with_options(
    answer: str, reference: str, options: list[str], extracted: str | None, correct: bool
) -> None:
    assert grade("choice", answer, reference, options=options) == Grade(extracted=extracted, correct=correct)


def test_without_options_letters_stop_at_e() -> None:
    assert extract_choice("The answer is H") is None


@pytest.mark.parametrize(
    ("value", "options"),
    [
        pytest.param(["cat", "dog"], ("cat", "dog"), id="list"),
        pytest.param("['cat', 'dog']", ("cat", "dog"), id="python_list_string"),
        pytest.param("[1, 2.5]", ("1", "2.5"), id="numbers"),
        pytest.param("[]", None, id="empty"),
        pytest.param("cat, dog", None, id="not_a_list"),
        pytest.param("[['nested']]", None, id="nested"),
        pytest.param("__import__('os').system('true')", None, id="code_is_not_evaluated"),
        pytest.param("[" * 100_000, None, id="deep_brackets"),
        pytest.param([str(i) for i in range(11)], None, id="more_options_than_letters"),
        pytest.param(None, None, id="none"),
    ],
)
def test_parse_options(value: object, options: tuple[str, ...] | None) -> None:
    assert parse_options(value) == options


# --- what a Grade means ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grader", "answer", "extracted"),
    [
        pytest.param("choice", "The answer is B", "B", id="choice"),
        pytest.param("numeric", "about 7 cm", "7", id="numeric"),
        pytest.param("exact", "Blue.", "blue", id="exact"),
        pytest.param("boxed", "\\boxed{7}", "7", id="boxed"),
    ],
)
def test_without_reference_the_answer_is_extracted_but_not_graded(
    grader: GraderName, answer: str, extracted: str
) -> None:
    assert grade(grader, answer, None) == Grade(extracted=extracted, correct=None)


@pytest.mark.parametrize("grader", GRADERS)
def test_with_reference_an_answer_without_anything_to_extract_is_wrong(grader: GraderName) -> None:
    assert grade(grader, "", "B" if grader == "choice" else "1") == Grade(extracted=None, correct=False)


@pytest.mark.parametrize(
    ("grader", "reference"),
    [
        pytest.param("choice", "blue", id="choice_reference_without_letter"),
        pytest.param("numeric", "twelve", id="numeric_reference_without_number"),
        pytest.param("exact", " ... ", id="exact_reference_empty_after_normalizing"),
        pytest.param("boxed", "\\boxed{}", id="boxed_reference_with_empty_box"),
    ],
)
def test_unusable_reference_is_refused(grader: GraderName, reference: str) -> None:
    with pytest.raises(ValueError, match="cannot use reference"):
        normalize_reference(grader, reference)
    with pytest.raises(ValueError, match="cannot use reference"):
        grade(grader, "anything", reference)


def test_unknown_grader_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown grader"):
        grade("regex", "B", "B")  # type: ignore[arg-type]


# --- adversarial input -----------------------------------------------------------------------------------

_N = 100_000
LONG_INPUTS = [
    pytest.param(" " * _N, id="spaces"),
    pytest.param("(" * _N, id="open_parens"),
    pytest.param("{" * _N, id="open_braces"),
    pytest.param("\\boxed{" * (_N // 7), id="unclosed_boxes"),
    pytest.param("\\boxed{1}" * (_N // 9), id="many_boxes"),
    pytest.param("\\boxed{a" + " " * _N + "b}", id="box_with_long_space_run"),
    pytest.param("9" * _N, id="one_huge_number"),
    pytest.param("1," * (_N // 2), id="comma_separated_digits"),
    pytest.param("1,000" * (_N // 5), id="thousands_groups"),
    pytest.param("1." * (_N // 2), id="dotted_digits"),
    pytest.param("-" + " " * _N + "5", id="minus_then_space_run"),
    pytest.param("\\frac{" * (_N // 6), id="unclosed_fractions"),
    pytest.param("\\text{" * (_N // 6), id="unclosed_text_wrappers"),
    pytest.param("the answer is " * (_N // 14), id="repeated_statements_without_letter"),
    pytest.param("answer is" + " " * _N + "B", id="statement_then_space_run"),
    pytest.param("I" + " " * _N + "choose", id="pronoun_then_space_run"),
    pytest.param("A B C D E " * (_N // 10), id="many_letters"),
    pytest.param("(A) " * (_N // 4), id="many_parenthesized_letters"),
    pytest.param("\n" * _N, id="newlines"),
    pytest.param("'" * _N, id="quotes"),
    pytest.param("\u0663" * _N, id="non_ascii_digits"),
    pytest.param("3 x 10^" * (_N // 7), id="unfinished_powers"),
]


@pytest.mark.timeout(5)
@pytest.mark.parametrize("grader", GRADERS)
@pytest.mark.parametrize("text", LONG_INPUTS)
def test_long_adversarial_answer_is_graded_promptly(grader: GraderName, text: str) -> None:
    result = grade(grader, text, "B" if grader == "choice" else "1")
    assert result.correct in (True, False)


@pytest.mark.timeout(5)
def test_answer_stated_after_long_reasoning_is_found() -> None:
    prose = "A cat sits on a mat and 3 dogs watch it. " * 2_500
    assert extract_choice(prose + "\nThe answer is D.") == "D"
    assert extract_number(prose + "\nThe answer is 17.") == "17"
    assert extract_boxed(prose + "\n\\boxed{17}") == "17"
    assert normalize_exact("  " + "word " * 20_000 + "  ") == ("word " * 20_000).strip()


# --- properties ------------------------------------------------------------------------------------------

_FRAGMENTS = [
    "A", "b", "(C)", "D.", " the answer is ", "Answer: ", "\\boxed{", "}", "{", "\\frac{1}{2}", "12", "-3",
    "1,234", "45%", "$", "**", "option ", "I choose ", "\n", " ", "e", "x = ", "^{2}", "\\text{", "\uff23", "\u0663",
    "none", "'", ".", ",", "/", "\\times 10^{3}", "答案是",
]  # fmt: skip


def _random_answers(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices(_FRAGMENTS, k=rng.randint(0, 30))) for _ in range(count)]


@pytest.mark.parametrize("grader", GRADERS)
def test_grading_is_deterministic(grader: GraderName) -> None:
    reference = "C" if grader == "choice" else "12"
    for answer in _random_answers(seed=len(grader), count=500):
        first = grade(grader, answer, reference)
        assert grade(grader, answer, reference) == first
        assert grade(grader, answer, None) == Grade(extracted=first.extracted, correct=None)


@pytest.mark.parametrize("grader", GRADERS)
def test_an_answer_always_agrees_with_itself_as_reference(grader: GraderName) -> None:
    for answer in _random_answers(seed=100 + len(grader), count=500):
        extracted = grade(grader, answer, None).extracted
        if extracted is not None:
            assert grade(grader, answer, answer) == Grade(extracted=extracted, correct=True)


@pytest.mark.parametrize("grader", GRADERS)
def test_surrounding_whitespace_does_not_change_the_grade(grader: GraderName) -> None:
    reference = "C" if grader == "choice" else "12"
    for answer in _random_answers(seed=200 + len(grader), count=500):
        assert grade(grader, f"  \n{answer}\n ", reference).correct == grade(grader, answer, reference).correct
