"""SAM-Veteran's prompts as the paper prints them (Figure 5), and the answer-only variants its Table 6 ablates.

Typed here, independently of ``recipe.task.prompts``, so tests can check what the policy is shown against the paper.
``{Question}`` is the slot the question fills.
"""

# SAM-Veteran's Figure 5, typed from the paper: Q^B (grounding) and Q^P (refinement).
FIGURE5_GROUNDING = (
    'Let\'s find out "{Question}" with bbox step by step. Output the thinking process in <think> </think> and final '
    "answer in <answer> </answer> tags. Output the bbox of the target object in JSON format. Here is an example: "
    '<think> thinking process here </think> <answer> {"bbox_2d": [x1, y1, x2, y2]} </answer>'
)
FIGURE5_REFINEMENT = (
    'Please point out any errors in the green segmentation mask according to the question "{Question}". Output the '
    "thinking process in <think> </think> and final answer in <answer> </answer> tags. Output the center point of "
    'the error area in JSON format, with the key "pos_point" for the false negative and "neg_point" for the false '
    "positive. Set the point to null if there are no errors. i.e., <think> thinking process here </think> <answer> "
    '{"pos_point": null, "neg_point": [x,y]} </answer>'
)
# Table 6's "w/o CoT" variants: the paper prints no prompt for them. These are ours (docs/conventions.md,
# "Parsing"): Figure 5's without the thinking step, the answer alone in <answer> tags.
ANSWER_ONLY_GROUNDING = (
    'Find out "{Question}" with bbox. Output the final answer in <answer> </answer> tags, without any reasoning. '
    'Output the bbox of the target object in JSON format. Here is an example: <answer> {"bbox_2d": [x1, y1, x2, y2]} '
    "</answer>"
)
ANSWER_ONLY_REFINEMENT = (
    'Please point out any errors in the green segmentation mask according to the question "{Question}". Output the '
    "final answer in <answer> </answer> tags, without any reasoning. Output the center point of the error area in "
    'JSON format, with the key "pos_point" for the false negative and "neg_point" for the false positive. Set the '
    'point to null if there are no errors. i.e., <answer> {"pos_point": null, "neg_point": [x,y]} </answer>'
)
