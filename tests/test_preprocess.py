"""Tests of lib/data/preprocess.py: the per-sample pipeline from raw COCO-17 pixels to a model clip.

Every expectation is computed by hand in the test (from the COCO -> H36M mapping, the image size, the
bounding box), never copied from the code's output.
"""
import numpy as np
import pytest

from lib.data.preprocess import (
    coco_to_h36m, crop_scale, make_clip, normalize_to_image, random_move, resample_indices,
    select_persons, track_two_persons,
)

# COCO-17 indices, spelled out so the H36M expectations below read like the published mapping.
NOSE, L_EYE, R_EYE = 0, 1, 2
L_SHO, R_SHO, L_ELB, R_ELB, L_WRI, R_WRI = 5, 6, 7, 8, 9, 10
L_HIP, R_HIP, L_KNE, R_KNE, L_ANK, R_ANK = 11, 12, 13, 14, 15, 16


def expected_h36m(coco):
    """COCO-17 values [..., 17, C] -> H36M-17 [..., 17, C], written joint by joint (REFERENCE 6.2 step 4)."""
    pelvis = (coco[..., L_HIP, :] + coco[..., R_HIP, :]) / 2
    thorax = (coco[..., L_SHO, :] + coco[..., R_SHO, :]) / 2
    joints = [
        pelvis,                                   # 0 pelvis
        coco[..., R_HIP, :],                      # 1 right hip
        coco[..., R_KNE, :],                      # 2 right knee
        coco[..., R_ANK, :],                      # 3 right ankle
        coco[..., L_HIP, :],                      # 4 left hip
        coco[..., L_KNE, :],                      # 5 left knee
        coco[..., L_ANK, :],                      # 6 left ankle
        (pelvis + thorax) / 2,                    # 7 spine
        thorax,                                   # 8 thorax
        coco[..., NOSE, :],                       # 9 nose
        (coco[..., L_EYE, :] + coco[..., R_EYE, :]) / 2,  # 10 head
        coco[..., L_SHO, :],                      # 11 left shoulder
        coco[..., L_ELB, :],                      # 12 left elbow
        coco[..., L_WRI, :],                      # 13 left wrist
        coco[..., R_SHO, :],                      # 14 right shoulder
        coco[..., R_ELB, :],                      # 15 right elbow
        coco[..., R_WRI, :],                      # 16 right wrist
    ]
    return np.stack(joints, axis=-2)


def coco_pose():
    """One COCO pose with a distinct position and a distinct score for every joint."""
    j = np.arange(17, dtype=np.float64)
    xy = np.stack([100.0 + 37.0 * j, 900.0 - 13.0 * j - 2.0 * j ** 2], axis=-1)  # [17, 2]
    score = 0.1 + 0.05 * j  # 0.10 .. 0.90, all different
    return xy, score


# ---------------------------------------------------------------------------------------------------------
# coco_to_h36m


def test_coco_to_h36m_coordinates_and_scores_follow_the_mapping():
    xy, score = coco_pose()
    h_xy, h_score = coco_to_h36m(xy, score)
    np.testing.assert_allclose(h_xy, expected_h36m(xy), rtol=1e-6)
    np.testing.assert_allclose(h_score, expected_h36m(score[:, None])[:, 0], rtol=1e-6)
    # A few joints by value, so a mapping error that also slipped into expected_h36m would show.
    np.testing.assert_allclose(h_xy[1], xy[12], rtol=1e-6)  # right hip
    np.testing.assert_allclose(h_xy[13], xy[9], rtol=1e-6)  # left wrist
    np.testing.assert_allclose(h_score[9], score[0], rtol=1e-6)  # nose score
    np.testing.assert_allclose(h_score[0], (0.1 + 0.05 * 11 + 0.1 + 0.05 * 12) / 2, rtol=1e-6)  # pelvis
    np.testing.assert_allclose(h_score[7], 0.1 + 0.05 * (5 + 6 + 11 + 12) / 4, rtol=1e-6)  # spine


def test_coco_to_h36m_works_on_batched_arrays():
    xy, score = coco_pose()
    rng = np.random.default_rng(0)
    batch_xy = xy + rng.normal(0, 5, size=(2, 3, 17, 2))  # [M, T, 17, 2]
    batch_score = np.clip(score + rng.normal(0, 0.01, size=(2, 3, 17)), 0, 1)
    h_xy, h_score = coco_to_h36m(batch_xy, batch_score)
    assert h_xy.shape == (2, 3, 17, 2) and h_score.shape == (2, 3, 17)
    np.testing.assert_allclose(h_xy, expected_h36m(batch_xy), rtol=1e-6)
    np.testing.assert_allclose(h_score, expected_h36m(batch_score[..., None])[..., 0], rtol=1e-6)


def test_coco_to_h36m_legacy_conf_order_leaves_scores_in_coco_order():
    xy, score = coco_pose()
    h_xy, h_score = coco_to_h36m(xy, score, legacy_conf_order=True)
    np.testing.assert_allclose(h_xy, expected_h36m(xy), rtol=1e-6)  # coordinates still converted
    np.testing.assert_allclose(h_score, score, rtol=1e-6)  # H36M joint v carries COCO joint v's score
    _, fixed = coco_to_h36m(xy, score)
    assert not np.allclose(fixed, h_score)


# ---------------------------------------------------------------------------------------------------------
# resample_indices


@pytest.mark.parametrize("num_frames, clip_len, expected", [
    (3, 6, [0, 0, 1, 1, 2, 2]),  # positions 0, .5, 1, 1.5, 2, 2.5
    (10, 4, [0, 2, 5, 7]),  # positions 0, 2.5, 5, 7.5
    (5, 5, [0, 1, 2, 3, 4]),
    (1, 4, [0, 0, 0, 0]),
    (7, 1, [0]),
])
def test_resample_test_mode_is_evenly_spaced_by_hand(num_frames, clip_len, expected):
    idx = resample_indices(num_frames, clip_len)
    assert idx.tolist() == expected
    assert np.issubdtype(idx.dtype, np.integer)


@pytest.mark.parametrize("num_frames, clip_len", [(30, 243), (243, 243), (300, 243), (1000, 64), (17, 5)])
def test_resample_test_mode_matches_floor_linspace(num_frames, clip_len):
    idx = resample_indices(num_frames, clip_len)
    assert idx.tolist() == np.floor(np.linspace(0, num_frames, clip_len, endpoint=False)).astype(int).tolist()
    # Within one frame of the exact position i * L / n (the float linspace may round down by one).
    exact = np.arange(clip_len) * num_frames / clip_len
    assert np.all(np.abs(idx - exact) < 1 + 1e-9)
    assert np.array_equal(idx, resample_indices(num_frames, clip_len))  # deterministic


@pytest.mark.parametrize("num_frames, clip_len", [(243, 243), (300, 243), (500, 100), (64, 16), (101, 10)])
def test_resample_train_long_clips_jitter_inside_their_own_interval(num_frames, clip_len):
    rng = np.random.default_rng(1)
    i = np.arange(clip_len)
    seen = []
    for _ in range(50):
        idx = resample_indices(num_frames, clip_len, rng)
        assert idx.shape == (clip_len,)
        assert idx.min() >= 0 and idx.max() <= num_frames - 1
        assert np.all(np.diff(idx) >= 0)
        # Index i lies in [i L / n, (i + 1) L / n), in exact integer arithmetic.
        assert np.all(idx >= i * num_frames // clip_len)
        assert np.all(idx * clip_len < (i + 1) * num_frames)
        seen.append(idx)
    seen = np.array(seen)
    if num_frames == clip_len:
        assert np.all(seen == i)  # every interval holds a single frame
    else:
        assert len({tuple(s) for s in seen}) > 1  # the draws really differ


def test_resample_train_covers_each_whole_interval():
    # L = 2n: interval i is frames {2i, 2i + 1}; over many draws both must be picked for every i.
    rng = np.random.default_rng(2)
    draws = np.array([resample_indices(40, 20, rng) for _ in range(200)])
    assert set(np.unique(draws - 2 * np.arange(20))) == {0, 1}


@pytest.mark.parametrize("num_frames, clip_len", [(3, 8), (10, 243), (100, 243), (242, 243)])
def test_resample_train_short_clips_pick_floor_or_ceil(num_frames, clip_len):
    rng = np.random.default_rng(3)
    even = np.linspace(0, num_frames, clip_len, endpoint=False)
    lo, hi = np.floor(even), np.minimum(np.ceil(even), num_frames - 1)
    picked_ceil = np.zeros(clip_len, bool)
    picked_floor = np.zeros(clip_len, bool)
    for _ in range(50):
        idx = resample_indices(num_frames, clip_len, rng)
        assert idx.shape == (clip_len,)
        assert idx.min() >= 0 and idx.max() <= num_frames - 1
        assert np.all(np.diff(idx) >= 0)
        assert np.all((idx == lo) | (idx == hi))
        picked_floor |= (idx == lo) & (lo != hi)
        picked_ceil |= (idx == hi) & (lo != hi)
    fractional = lo != hi
    assert fractional.any()
    # Both choices really happen (sorting puts the floors of a run of equal floors first, so the
    # positions near the end of a long run rarely get the floor; most positions still see both).
    assert picked_floor[fractional].mean() > 0.5 and picked_ceil[fractional].mean() > 0.5


def test_resample_train_same_seed_same_draw_different_seed_different_draw():
    for num_frames, clip_len in [(300, 243), (50, 243)]:
        a = resample_indices(num_frames, clip_len, np.random.default_rng(7))
        b = resample_indices(num_frames, clip_len, np.random.default_rng(7))
        c = resample_indices(num_frames, clip_len, np.random.default_rng(8))
        assert np.array_equal(a, b)
        assert not np.array_equal(a, c)
        rng = np.random.default_rng(7)
        first, second = resample_indices(num_frames, clip_len, rng), resample_indices(num_frames, clip_len, rng)
        assert not np.array_equal(first, second)  # successive draws from one stream differ


# ---------------------------------------------------------------------------------------------------------
# normalize_to_image


def test_normalize_landscape_ntu_image():
    corners = np.array([[0, 0], [1920, 0], [0, 1080], [1920, 1080], [960, 540]], dtype=np.float64)
    out = normalize_to_image(corners, (1080, 1920))
    expected = [[-1, -1], [1, -1], [-1, 0.125], [1, 0.125], [0, -0.4375]]  # y: 1080 / 1920 * 2 - 1 = 0.125
    np.testing.assert_allclose(out, expected, atol=1e-12)


def test_normalize_uses_one_divisor_so_the_aspect_ratio_is_kept():
    a, b = np.array([100.0, 200.0]), np.array([400.0, 600.0])
    na, nb = normalize_to_image(np.stack([a, b]), (1080, 1920))
    d = nb - na
    assert d[0] / d[1] == pytest.approx((b - a)[0] / (b - a)[1])
    np.testing.assert_allclose(d, (b - a) * 2 / 1920)


def test_normalize_portrait_image_divides_by_the_height():
    # img_hw is (height, width): a 1080-wide, 1920-high portrait image.
    pts = np.array([[0, 0], [1080, 1920], [540, 960]], dtype=np.float64)
    out = normalize_to_image(pts, (1920, 1080))
    np.testing.assert_allclose(out, [[-1, -1], [0.125, 1], [-0.4375, 0]], atol=1e-12)
    out = normalize_to_image(np.array([[640.0, 720.0]]), (720, 1280))
    np.testing.assert_allclose(out, [[0.0, 720 / 1280 * 2 - 1]], atol=1e-12)


# ---------------------------------------------------------------------------------------------------------
# crop_scale


def make_clip_array(rng, persons=2, frames=4, lo=(-0.3, -0.6), hi=(0.4, 0.1)):
    """[M, T, 17, 3] with x, y uniform in the box lo..hi and scores in (0.2, 1)."""
    clip = np.zeros((persons, frames, 17, 3))
    clip[..., :2] = rng.uniform(lo, hi, size=(persons, frames, 17, 2))
    clip[..., 2] = rng.uniform(0.2, 1.0, size=(persons, frames, 17))
    return clip


def confident_bbox(clip):
    pts = clip[..., :2][clip[..., 2] != 0]
    return pts.min(0), pts.max(0)


def test_crop_scale_fixed_ratio_centres_the_bbox_and_spans_one():
    rng = np.random.default_rng(0)
    clip = make_clip_array(rng)
    lo, hi = confident_bbox(clip)
    centre, longer = (lo + hi) / 2, (hi - lo).max()
    out = crop_scale(clip, (2.0, 2.0))
    # Ratio 2: x' = (x - centre) * 2 / (longer * 2) = (x - centre) / longer.
    np.testing.assert_allclose(out[..., :2], (clip[..., :2] - centre) / longer, atol=1e-9)
    np.testing.assert_array_equal(out[..., 2], clip[..., 2])
    out_lo, out_hi = confident_bbox(out)
    np.testing.assert_allclose((out_lo + out_hi) / 2, 0, atol=1e-9)
    assert (out_hi - out_lo).max() == pytest.approx(1.0)
    assert out.min() >= -1 and out.max() <= 1


def test_crop_scale_excludes_zero_score_joints_from_the_bbox():
    rng = np.random.default_rng(1)
    clip = make_clip_array(rng)
    reference = crop_scale(clip, (2.0, 2.0))
    # A missed detection far away (score 0) must not change the box.
    clip[1, 2, 5] = [5.0, -7.0, 0.0]
    clip[0, 0, 0] = [0.0, 0.0, 0.0]
    out = crop_scale(clip, (2.0, 2.0))
    confident = clip[..., 2] != 0
    np.testing.assert_allclose(out[confident], reference[confident], atol=1e-12)
    out_lo, out_hi = confident_bbox(out)
    np.testing.assert_allclose((out_lo + out_hi) / 2, 0, atol=1e-9)
    assert (out_hi - out_lo).max() == pytest.approx(1.0)
    assert out.min() >= -1 and out.max() <= 1  # the far-away joint is clipped, not left at 5 or -7


def test_crop_scale_too_few_confident_joints_gives_zeros():
    rng = np.random.default_rng(2)
    clip = make_clip_array(rng)
    clip[..., 2] = 0
    clip[0, 1, [3, 7, 9], 2] = 0.8  # three confident joints only
    out = crop_scale(clip, (2.0, 2.0))
    assert out.shape == clip.shape and not out.any()
    clip[1, 3, 4, 2] = 0.5  # the fourth one: now it is cropped
    assert crop_scale(clip, (2.0, 2.0)).any()


def test_crop_scale_does_not_modify_its_input():
    rng = np.random.default_rng(3)
    clip = make_clip_array(rng)
    clip[0, 0, 0] = [3.0, 3.0, 0.0]
    before = clip.copy()
    crop_scale(clip, (1.0, 3.0), np.random.default_rng(0))
    crop_scale(clip, (2.0, 2.0))
    np.testing.assert_array_equal(clip, before)


def test_crop_scale_random_ratio_lies_in_the_range():
    rng = np.random.default_rng(4)
    clip = make_clip_array(rng)
    spans = []
    for seed in range(100):
        out = crop_scale(clip, (1.0, 3.0), np.random.default_rng(seed))
        out_lo, out_hi = confident_bbox(out)
        np.testing.assert_allclose((out_lo + out_hi) / 2, 0, atol=1e-9)  # still centred
        spans.append((out_hi - out_lo).max())  # = 2 / ratio
        assert out.min() >= -1 and out.max() <= 1
    spans = np.array(spans)
    assert spans.min() >= 2 / 3 - 1e-9 and spans.max() <= 2 + 1e-9
    assert spans.max() - spans.min() > 0.5  # the ratio really varies over the range
    same = crop_scale(clip, (1.0, 3.0), np.random.default_rng(5))
    np.testing.assert_array_equal(same, crop_scale(clip, (1.0, 3.0), np.random.default_rng(5)))


# ---------------------------------------------------------------------------------------------------------
# random_move


def fit_similarity(src, dst):
    """Least-squares dst = a * src + b in complex form (a = scale * e^{i angle}); returns a, b, max residual."""
    p = src[:, 0] + 1j * src[:, 1]
    q = dst[:, 0] + 1j * dst[:, 1]
    pc, qc = p - p.mean(), q - q.mean()
    a = (qc * np.conj(pc)).sum() / (np.abs(pc) ** 2).sum()
    b = q.mean() - a * p.mean()
    return a, b, np.abs(a * p + b - q).max()


def test_random_move_is_a_bounded_similarity_per_frame_drifting_linearly():
    rng = np.random.default_rng(0)
    clip = make_clip_array(rng, persons=2, frames=7)
    before = clip.copy()
    for seed in range(20):
        out = random_move(clip, np.random.default_rng(seed))
        assert out is not clip and not np.shares_memory(out, clip)
        np.testing.assert_array_equal(clip, before)  # input unchanged
        np.testing.assert_array_equal(out[..., 2], clip[..., 2])  # scores unchanged
        params = []
        for t in range(clip.shape[1]):
            src = clip[:, t, :, :2].reshape(-1, 2)  # both persons move together
            dst = out[:, t, :, :2].reshape(-1, 2)
            a, b, residual = fit_similarity(src, dst)
            assert residual < 1e-9
            # Pairwise distances all scale by the same factor |a|.
            d_src = np.linalg.norm(src[:, None] - src[None], axis=-1)
            d_dst = np.linalg.norm(dst[:, None] - dst[None], axis=-1)
            off = ~np.eye(len(src), dtype=bool)
            np.testing.assert_allclose(d_dst[off] / d_src[off], abs(a), rtol=1e-9)
            assert 0.9 - 1e-9 <= abs(a) <= 1.1 + 1e-9
            assert abs(np.degrees(np.angle(a))) <= 10 + 1e-9
            assert abs(b.real) <= 0.1 + 1e-9 and abs(b.imag) <= 0.1 + 1e-9
            params.append([np.angle(a), abs(a), b.real, b.imag])
        params = np.array(params)
        # Angle, scale and shift drift linearly from the first frame to the last.
        ramp = np.linspace(0, 1, clip.shape[1])[:, None]
        np.testing.assert_allclose(params, params[0] + (params[-1] - params[0]) * ramp, atol=1e-9)


def test_random_move_depends_on_the_rng():
    clip = make_clip_array(np.random.default_rng(1))
    a = random_move(clip, np.random.default_rng(1))
    b = random_move(clip, np.random.default_rng(1))
    c = random_move(clip, np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a[..., :2], c[..., :2])
    assert not np.allclose(a[..., :2], clip[..., :2])


# ---------------------------------------------------------------------------------------------------------
# select_persons


def persons_with_totals(totals, frames=3):
    """keypoint [M, T, 17, 2] marked with the person index; scores whose sum over (T, 17) is totals[m]."""
    m = len(totals)
    keypoint = np.broadcast_to(np.arange(m, dtype=np.float64)[:, None, None, None], (m, frames, 17, 2)).copy()
    score = np.broadcast_to(np.asarray(totals, float)[:, None, None] / (frames * 17), (m, frames, 17)).copy()
    return keypoint, score


@pytest.mark.parametrize("totals, kept", [
    ([5.0, 1.0, 3.0], [0, 2]),
    ([1.0, 4.0, 2.0, 3.0], [1, 3]),
    ([1.0, 2.0, 3.0], [1, 2]),
    ([9.0, 8.0, 0.5, 0.1, 7.0], [0, 1]),
])
def test_select_persons_keeps_the_two_most_confident_in_original_order(totals, kept):
    keypoint, score = persons_with_totals(totals)
    kp, sc = select_persons(keypoint, score)
    assert kp.shape == (2,) + keypoint.shape[1:] and sc.shape == (2,) + score.shape[1:]
    assert kp[:, 0, 0, 0].tolist() == kept
    np.testing.assert_allclose(sc.sum(axis=(1, 2)), np.asarray(totals)[kept])


def test_select_persons_with_at_most_two_is_unchanged():
    for totals in ([1.0], [1.0, 5.0], [5.0, 1.0]):
        keypoint, score = persons_with_totals(totals)
        kp, sc = select_persons(keypoint, score)
        np.testing.assert_array_equal(kp, keypoint)
        np.testing.assert_array_equal(sc, score)


# ---------------------------------------------------------------------------------------------------------
# track_two_persons

TEMPLATE = np.random.default_rng(42).uniform(-40, 40, size=(17, 2))  # a body shape, in pixels


def walking_apart(frames=20):
    """Ground truth: A walks left from x = 900, B walks right from x = 1000 (20 px a frame each).
    A's scores are high and B's low, and both vary per joint, so a score tells whose it is."""
    t = np.arange(frames)[:, None, None]
    a = TEMPLATE + np.stack([900.0 - 20 * t[..., 0], 500.0 + 0 * t[..., 0]], -1)  # [T, 17, 2]
    b = TEMPLATE[::-1] + np.stack([1000.0 + 20 * t[..., 0], 520.0 + 0 * t[..., 0]], -1)
    a_score = np.broadcast_to(0.9 - 0.01 * np.arange(17), (frames, 17)).copy()
    b_score = np.broadcast_to(0.3 + 0.01 * np.arange(17), (frames, 17)).copy()
    return a, a_score, b, b_score


def test_track_two_persons_undoes_detector_swaps_and_moves_scores_too():
    a, a_score, b, b_score = walking_apart()
    frames = a.shape[0]
    swapped = {5, 6, 7, 8, 12}  # the detector lists B first at these frames
    keypoint = np.zeros((2, frames, 17, 2))
    score = np.zeros((2, frames, 17))
    for t in range(frames):
        first, second = ((b, b_score), (a, a_score)) if t in swapped else ((a, a_score), (b, b_score))
        keypoint[0, t], score[0, t] = first[0][t], first[1][t]
        keypoint[1, t], score[1, t] = second[0][t], second[1][t]
    before = (keypoint.copy(), score.copy())
    kp, sc = track_two_persons(keypoint, score)
    np.testing.assert_array_equal(keypoint, before[0])  # inputs untouched
    np.testing.assert_array_equal(score, before[1])
    np.testing.assert_allclose(kp[0], a)
    np.testing.assert_allclose(kp[1], b)
    np.testing.assert_allclose(sc[0], a_score)  # the scores travelled with their coordinates
    np.testing.assert_allclose(sc[1], b_score)
    # Slot 0 moves continuously: 20 px a frame, never the ~100+ px jump of a swap.
    step = np.linalg.norm(np.diff(kp[0], axis=0), axis=-1).max()
    assert step == pytest.approx(20.0)


def test_track_two_persons_puts_single_person_frames_in_the_nearest_track():
    a, a_score, b, b_score = walking_apart()
    frames = a.shape[0]
    keypoint = np.zeros((2, frames, 17, 2))
    score = np.zeros((2, frames, 17))
    keypoint[0], score[0] = a, a_score
    keypoint[1], score[1] = b, b_score
    # Detector swaps at 5..9; single-person frames, always listed first (the other slot zeros, score 0).
    for t in range(5, 10):
        keypoint[:, t], score[:, t] = keypoint[::-1, t].copy(), score[::-1, t].copy()
    alone = {0: (b, b_score),  # before the first two-person frame
             7: (a, a_score),  # inside the swapped stretch
             8: (b, b_score),
             15: (b, b_score),
             16: (a, a_score)}
    for t, (pose, pose_score) in alone.items():
        keypoint[0, t], score[0, t] = pose[t], pose_score[t]
        keypoint[1, t], score[1, t] = 0.0, 0.0
    keypoint[:, 19], score[:, 19] = 0.0, 0.0  # nobody detected

    kp, sc = track_two_persons(keypoint, score)
    expected_kp = np.stack([a, b]).copy()
    expected_sc = np.stack([a_score, b_score]).copy()
    for t, (pose, _) in alone.items():
        missing = 1 if pose is a else 0
        expected_kp[missing, t], expected_sc[missing, t] = 0.0, 0.0
    expected_kp[:, 19], expected_sc[:, 19] = 0.0, 0.0
    np.testing.assert_allclose(kp, expected_kp)
    np.testing.assert_allclose(sc, expected_sc)


def test_track_two_persons_leaves_one_person_and_empty_second_person_alone():
    a, a_score, _, _ = walking_apart()
    kp, sc = track_two_persons(a[None], a_score[None])
    np.testing.assert_array_equal(kp, a[None])
    np.testing.assert_array_equal(sc, a_score[None])
    keypoint = np.stack([a, np.zeros_like(a)])
    score = np.stack([a_score, np.zeros_like(a_score)])
    kp, sc = track_two_persons(keypoint, score)
    np.testing.assert_array_equal(kp, keypoint)
    np.testing.assert_array_equal(sc, score)


# ---------------------------------------------------------------------------------------------------------
# make_clip


def single_person_video(frames):
    """M = 1: the COCO pose of coco_pose() drifting right 3 px a frame; scores all > 0."""
    xy, score = coco_pose()
    keypoint = (xy + np.stack([3.0 * np.arange(frames), np.zeros(frames)], -1)[:, None]).astype(np.float32)
    return keypoint[None], np.broadcast_to(score, (1, frames, 17)).astype(np.float32).copy()


def by_hand_single_person(keypoint, score, frames, img_width=1920):
    """The test pipeline for M = 1 and a landscape image, step by step: (xy, conf, ghost xy)."""
    xy = keypoint[0, frames].astype(np.float64) / img_width * 2 - 1  # normalised, [n, 17, 2]
    h_xy = expected_h36m(xy)
    h_score = expected_h36m(score[0, frames, :, None].astype(np.float64))[..., 0]
    lo, hi = h_xy.reshape(-1, 2).min(0), h_xy.reshape(-1, 2).max(0)
    centre, longer = (lo + hi) / 2, (hi - lo).max()
    # crop_scale with ratio 2: x' = (x - centre) * 2 / (2 * longer)
    return (h_xy - centre) / longer, h_score, np.clip((0 - centre) / longer, -1, 1)


def test_make_clip_test_pipeline_by_hand():
    clip_len = 8
    keypoint, score = single_person_video(clip_len)  # T == clip_len: every frame is used, in order
    out = make_clip(keypoint, score, (1080, 1920), clip_len)
    assert out.dtype == np.float32 and out.shape == (2, clip_len, 17, 3)
    xy, conf, ghost = by_hand_single_person(keypoint, score, np.arange(clip_len))
    np.testing.assert_allclose(out[0, ..., :2], xy, atol=1e-5)
    np.testing.assert_allclose(out[0, ..., 2], conf, atol=1e-6)
    # The padded second person has no confidence; its (0, 0) goes through the same crop, as in the
    # published pipeline (REFERENCE 14.11), so it sits at one constant point.
    assert not out[1, ..., 2].any()
    np.testing.assert_allclose(out[1, ..., :2], np.broadcast_to(ghost, (clip_len, 17, 2)), atol=1e-5)
    assert out.min() >= -1 and out.max() <= 1


def test_make_clip_resamples_frames_evenly_in_test_mode():
    # T = 3, clip_len = 6: frames 0, 0, 1, 1, 2, 2 (floor of 0, .5, 1, 1.5, 2, 2.5).
    keypoint, score = single_person_video(3)
    out = make_clip(keypoint, score, (1080, 1920), 6)
    xy, conf, _ = by_hand_single_person(keypoint, score, np.array([0, 0, 1, 1, 2, 2]))
    np.testing.assert_allclose(out[0, ..., :2], xy, atol=1e-5)
    np.testing.assert_allclose(out[0, ..., 2], conf, atol=1e-6)
    # T = 30, clip_len = 4: frames 0, 7, 15, 22.
    keypoint, score = single_person_video(30)
    out = make_clip(keypoint, score, (1080, 1920), 4)
    xy, _, _ = by_hand_single_person(keypoint, score, np.array([0, 7, 15, 22]))
    np.testing.assert_allclose(out[0, ..., :2], xy, atol=1e-5)


def test_make_clip_test_pipeline_is_deterministic_and_in_range():
    rng = np.random.default_rng(0)
    keypoint = rng.uniform([0, 0], [1920, 1080], size=(2, 50, 17, 2)).astype(np.float32)
    score = rng.uniform(0.1, 1, size=(2, 50, 17)).astype(np.float32)
    before = (keypoint.copy(), score.copy())
    a = make_clip(keypoint, score, (1080, 1920), 32)
    b = make_clip(keypoint, score, (1080, 1920), 32)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.shape == (2, 32, 17, 3)
    assert a.min() >= -1 and a.max() <= 1
    np.testing.assert_array_equal(keypoint, before[0])
    np.testing.assert_array_equal(score, before[1])


def test_make_clip_scores_follow_tracked_coordinates():
    a, a_score, b, b_score = walking_apart(frames=12)
    keypoint = np.stack([a, b]).astype(np.float32)
    score = np.stack([a_score, b_score]).astype(np.float32)
    keypoint[:, 4:8] = keypoint[::-1, 4:8].copy()  # the detector swaps the two at frames 4..7
    score[:, 4:8] = score[::-1, 4:8].copy()
    out = make_clip(keypoint, score, (1080, 1920), 12)
    np.testing.assert_allclose(out[0, ..., 2], expected_h36m(a_score[..., None])[..., 0], atol=1e-6)
    np.testing.assert_allclose(out[1, ..., 2], expected_h36m(b_score[..., None])[..., 0], atol=1e-6)
    # A walks left: its pelvis x decreases every frame; B's increases.
    assert np.all(np.diff(out[0, :, 0, 0]) < 0) and np.all(np.diff(out[1, :, 0, 0]) > 0)


def test_make_clip_legacy_conf_order():
    keypoint, score = single_person_video(4)
    out = make_clip(keypoint, score, (1080, 1920), 4, legacy_conf_order=True)
    np.testing.assert_allclose(out[0, ..., 2], score[0], atol=1e-6)  # COCO order, unconverted
    fixed = make_clip(keypoint, score, (1080, 1920), 4)
    np.testing.assert_array_equal(out[..., :2], fixed[..., :2])


def test_make_clip_keeps_the_two_most_confident_of_three():
    a, a_score, b, b_score = walking_apart(frames=6)
    noise = a + 300.0
    keypoint = np.stack([a, noise, b]).astype(np.float32)
    score = np.stack([a_score, np.full_like(a_score, 0.05), b_score]).astype(np.float32)
    out = make_clip(keypoint, score, (1080, 1920), 6)
    expected = make_clip(keypoint[[0, 2]], score[[0, 2]], (1080, 1920), 6)
    np.testing.assert_array_equal(out, expected)


def test_make_clip_training_is_random_but_reproducible_and_in_range():
    rng = np.random.default_rng(0)
    keypoint = rng.uniform([200, 100], [1700, 1000], size=(2, 90, 17, 2)).astype(np.float32)
    score = rng.uniform(0.1, 1, size=(2, 90, 17)).astype(np.float32)

    def train(seed):
        return make_clip(keypoint, score, (1080, 1920), 30, rng=np.random.default_rng(seed),
                         random_move_on=True, scale_range=(1.0, 3.0))

    a, b, c = train(1), train(1), train(2)
    assert a.dtype == np.float32 and a.shape == (2, 30, 17, 3)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert a.min() >= -1 and a.max() <= 1
    test = make_clip(keypoint, score, (1080, 1920), 30)
    assert not np.allclose(a, test)


def test_make_clip_random_move_switch():
    rng = np.random.default_rng(0)
    keypoint = rng.uniform([200, 100], [1700, 1000], size=(2, 20, 17, 2)).astype(np.float32)
    score = rng.uniform(0.1, 1, size=(2, 20, 17)).astype(np.float32)
    test = make_clip(keypoint, score, (1080, 1920), 20)
    # T == clip_len (no frame choice) and a fixed ratio: without random_move training equals test.
    plain = make_clip(keypoint, score, (1080, 1920), 20, rng=np.random.default_rng(3), scale_range=(2, 2))
    np.testing.assert_array_equal(plain, test)
    moved = make_clip(keypoint, score, (1080, 1920), 20, rng=np.random.default_rng(3), random_move_on=True,
                      scale_range=(2, 2))
    assert not np.allclose(moved[..., :2], test[..., :2])
    np.testing.assert_array_equal(moved[..., 2], test[..., 2])
