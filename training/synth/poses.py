"""Random body poses within anatomical joint limits.

Anny ships no pose library beyond its rest (A-) pose and T-pose, so poses are drawn here: an
activity (standing, walking, running, sitting, crouching, kneeling, bending, lunging, free)
sets the legs and trunk, each arm gets its own gesture, and every joint gets noise on top,
clipped to its range of motion; fingers curl from open to a fist. Angles are in degrees about the bone-local axes of Anny's
"local-bone" parameterisation (y along the bone, x the hinge of elbows and knees), written
for the left side; the right side mirrors them (y and z negated).
"""

from __future__ import annotations

import numpy as np

# (x, y, z) ranges of motion, degrees, relative to Anny's rest pose (arms 45 degrees down,
# elbows bent about 40 degrees). Signs, left side: hip x < 0 flexes the thigh forward and
# z < 0 abducts it; knee x > 0 flexes; shoulder x > 0 raises the arm forward and z > 0
# raises it sideways; elbow x > 0 flexes; spine and neck x > 0 bend forward.
LIMITS: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "upperleg01": ((-125, 30), (-35, 35), (-45, 20)),
    "lowerleg01": ((0, 150), (-10, 10), (-5, 5)),
    "foot": ((-35, 35), (-10, 10), (-15, 15)),
    "upperarm01": ((-60, 170), (-70, 70), (-55, 130)),
    "lowerarm01": ((-42, 100), (-60, 60), (-5, 5)),
    "wrist": ((-50, 50), (-10, 10), (-25, 30)),
    "clavicle": ((-10, 10), (-5, 5), (-10, 15)),
    "spine": ((-8, 22), (-10, 10), (-8, 8)),  # each of the five spine bones
    "neck01": ((-25, 30), (-40, 40), (-20, 20)),
    "head": ((-25, 30), (-40, 40), (-15, 15)),
}
SPINE = ("spine01", "spine02", "spine03", "spine04", "spine05")
# "lie": legs loosely bent; the scene lays the body down on its back, front or side.
ACTIVITIES = ("stand", "walk", "run", "sit", "crouch", "kneel", "bend", "lunge", "lie", "free")
ACTIVITY_WEIGHTS = (0.2, 0.18, 0.12, 0.12, 0.08, 0.06, 0.07, 0.07, 0.04, 0.1)
ARM_GESTURES = ("down", "relaxed", "forward", "raised", "side", "wave", "hip", "chest", "free")
ARM_WEIGHTS = (0.14, 0.18, 0.12, 0.1, 0.1, 0.1, 0.08, 0.08, 0.1)


def rotation_matrix(angles_deg: np.ndarray) -> np.ndarray:
    """Twist about y, then bend about x, then about z (bone-local axes)."""
    x, y, z = np.radians(angles_deg)
    cx, sx, cy, sy, cz, sz = np.cos(x), np.sin(x), np.cos(y), np.sin(y), np.cos(z), np.sin(z)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ rx @ ry


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _legs(activity: str, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], float]:
    """Hip, knee and ankle angles of both legs, and the forward bend of the trunk (degrees)."""
    z3 = np.zeros(3)
    hip = {"L": z3.copy(), "R": z3.copy()}
    knee = {"L": z3.copy(), "R": z3.copy()}
    ankle = {"L": z3.copy(), "R": z3.copy()}
    trunk = rng.normal(0, 5)
    for s in "LR":
        hip[s][2] = -abs(rng.normal(4, 4))
    if activity == "stand":
        for s in "LR":
            hip[s][0] = rng.normal(0, 6)
            hip[s][2] = -abs(rng.normal(5, 6))
            knee[s][0] = abs(rng.normal(0, 8))
    elif activity in ("walk", "run"):
        phase = rng.uniform(0, 2 * np.pi)
        amp = _u(rng, 15, 32) if activity == "walk" else _u(rng, 30, 55)
        bend = 50 if activity == "walk" else 110
        for s, sign in (("L", 1.0), ("R", -1.0)):
            swing = sign * np.sin(phase)
            hip[s][0] = -amp * swing
            # The knee bends most while its leg swings forward.
            knee[s][0] = max(0.0, bend * np.sin(phase + sign * np.pi / 2 + 0.6)) * rng.uniform(0.5, 1.0)
            ankle[s][0] = rng.normal(0, 10)
        trunk = _u(rng, 0, 8) if activity == "walk" else _u(rng, 8, 25)
    elif activity == "sit":
        for s in "LR":
            hip[s] = np.array([_u(rng, -105, -70), rng.normal(0, 10), -_u(rng, 0, 20)])
            knee[s][0] = _u(rng, 60, 110)
        if rng.random() < 0.3:  # legs crossed or stretched
            knee["R"][0] = _u(rng, 0, 40)
        trunk = _u(rng, -10, 25)
    elif activity == "crouch":
        for s in "LR":
            hip[s] = np.array([_u(rng, -125, -95), rng.normal(0, 8), -_u(rng, 5, 30)])
            knee[s][0] = _u(rng, 110, 150)
            ankle[s][0] = _u(rng, -30, 0)
        trunk = _u(rng, 15, 60)
    elif activity == "kneel":
        front = "L" if rng.random() < 0.5 else "R"
        back = "R" if front == "L" else "L"
        hip[front][0], knee[front][0] = _u(rng, -100, -70), _u(rng, 75, 105)
        hip[back][0], knee[back][0] = _u(rng, -15, 10), _u(rng, 80, 120)
        trunk = _u(rng, -5, 20)
    elif activity == "bend":
        for s in "LR":
            hip[s][0] = _u(rng, -60, -10)
            knee[s][0] = _u(rng, 0, 35)
        trunk = _u(rng, 40, 90)
    elif activity == "lunge":
        front = "L" if rng.random() < 0.5 else "R"
        back = "R" if front == "L" else "L"
        hip[front][0], knee[front][0] = _u(rng, -95, -50), _u(rng, 50, 100)
        hip[back][0], knee[back][0] = _u(rng, 0, 30), _u(rng, 0, 40)
        trunk = _u(rng, -5, 30)
    elif activity == "lie":
        for s in "LR":
            hip[s][0] = _u(rng, -50, 10)
            knee[s][0] = _u(rng, 0, 70)
        trunk = _u(rng, -10, 20)
    else:  # free: anywhere within the limits, legs more often low
        for s in "LR":
            hip[s] = np.array([_u(rng, -110, 25), _u(rng, -30, 30), _u(rng, -45, 15)])
            knee[s][0] = _u(rng, 0, 130)
            ankle[s] = np.array([_u(rng, -30, 30), 0.0, _u(rng, -10, 10)])
        trunk = _u(rng, -20, 70)
    out = {}
    for s in "LR":
        out[f"upperleg01.{s}"] = hip[s]
        out[f"lowerleg01.{s}"] = knee[s]
        out[f"foot.{s}"] = ankle[s]
    return out, float(trunk)


def _arm(gesture: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shoulder, elbow and wrist angles of one (left) arm."""
    wrist = np.array([rng.normal(0, 15), 0.0, rng.normal(0, 10)])
    if gesture == "down":
        shoulder = np.array([rng.normal(0, 10), rng.normal(0, 20), _u(rng, -52, -35)])
        elbow = np.array([_u(rng, -42, -20), rng.normal(0, 20), 0.0])
    elif gesture == "relaxed":
        shoulder = np.array([rng.normal(5, 15), rng.normal(0, 20), _u(rng, -40, -5)])
        elbow = np.array([_u(rng, -35, 40), rng.normal(0, 20), 0.0])
    elif gesture == "forward":
        shoulder = np.array([_u(rng, 40, 110), rng.normal(0, 20), _u(rng, -50, 0)])
        elbow = np.array([_u(rng, -42, 60), rng.normal(0, 20), 0.0])
    elif gesture == "raised":
        shoulder = np.array([_u(rng, 60, 170), rng.normal(0, 25), _u(rng, 0, 120)])
        elbow = np.array([_u(rng, -42, 50), rng.normal(0, 20), 0.0])
    elif gesture == "side":
        shoulder = np.array([rng.normal(0, 15), rng.normal(0, 25), _u(rng, 20, 60)])
        elbow = np.array([_u(rng, -42, 30), rng.normal(0, 20), 0.0])
    elif gesture == "wave":
        shoulder = np.array([rng.normal(10, 15), _u(rng, -60, 0), _u(rng, 30, 80)])
        elbow = np.array([_u(rng, 50, 100), rng.normal(0, 20), 0.0])
    elif gesture == "hip":  # hand on the hip
        shoulder = np.array([rng.normal(-10, 8), _u(rng, 20, 50), _u(rng, -25, -5)])
        elbow = np.array([_u(rng, 50, 90), rng.normal(0, 15), 0.0])
    elif gesture == "chest":  # forearm across the body
        shoulder = np.array([_u(rng, 20, 50), _u(rng, -60, -20), _u(rng, -45, -20)])
        elbow = np.array([_u(rng, 70, 100), rng.normal(0, 15), 0.0])
    else:
        lo, hi = np.array(LIMITS["upperarm01"]).T
        shoulder = rng.uniform(lo, hi)
        elbow = np.array([_u(rng, -42, 100), _u(rng, -60, 60), 0.0])
    return shoulder, elbow, wrist


def _mirror(angles: np.ndarray) -> np.ndarray:
    return angles * np.array([1.0, -1.0, -1.0])


def _clip(bone: str, angles: np.ndarray) -> np.ndarray:
    key = bone.split(".")[0]
    key = "spine" if key in SPINE else key
    lo, hi = np.array(LIMITS[key]).T
    return np.clip(angles, lo, hi)


def sample_pose(
    rng: np.random.Generator, activity: str | None = None, weights: tuple[float, ...] | None = None
) -> tuple[str, dict[str, np.ndarray]]:
    """(activity, {bone: 3x3 rotation}) for one body, in Anny's local-bone parameterisation;
    the activity drawn with weights (over ACTIVITIES; default ACTIVITY_WEIGHTS) unless given."""
    if activity is None:
        w = np.array(weights if weights else ACTIVITY_WEIGHTS, dtype=float)
        activity = str(rng.choice(ACTIVITIES, p=w / w.sum()))
    angles, trunk = _legs(activity, rng)
    if activity in ("walk", "run"):
        # Each arm swings against the leg on its side.
        hip_l = angles["upperleg01.L"][0]
        elbow_flex = _u(rng, -20, 30) if activity == "walk" else _u(rng, 40, 90)
        for s, sign in (("L", 1.0), ("R", -1.0)):
            swing = sign * hip_l * rng.uniform(0.6, 1.2)
            angles[f"upperarm01.{s}"] = np.array([swing, rng.normal(0, 10), _u(rng, -45, -25)])
            angles[f"lowerarm01.{s}"] = np.array([elbow_flex + rng.normal(0, 10), rng.normal(0, 15), 0.0])
    else:
        gestures = rng.choice(ARM_GESTURES, size=2, p=np.array(ARM_WEIGHTS) / sum(ARM_WEIGHTS))
        if rng.random() < 0.3:
            gestures[1] = gestures[0]
        for s, gesture in zip("LR", gestures):
            shoulder, elbow, wrist = _arm(str(gesture), rng)
            angles[f"upperarm01.{s}"] = shoulder
            angles[f"lowerarm01.{s}"] = elbow
            angles[f"wrist.{s}"] = wrist
    for s in "LR":
        angles[f"clavicle.{s}"] = rng.normal(0, 4, 3)
    # The trunk's bend, side bend and twist are shared by the five spine bones.
    lateral, twist = rng.normal(0, 8), rng.normal(0, 12)
    for bone in SPINE:
        angles[bone] = np.array([trunk, twist, lateral]) / len(SPINE) + rng.normal(0, 1.5, 3)
    head = np.array([rng.normal(0, 15), rng.normal(0, 30), rng.normal(0, 10)])
    angles["neck01"] = head / 2
    angles["head"] = head / 2 + rng.normal(0, 3, 3)

    rotations = {}
    for bone, a in angles.items():
        a = a + rng.normal(0, 3, 3)  # every joint a little off the template
        a = _clip(bone, a)
        if bone.endswith(".R"):
            a = _mirror(a)
        rotations[bone] = rotation_matrix(a)
    rotations.update(_hands(rng))
    return activity, rotations


def _hands(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Fingers from open (Anny's rest pose, spread flat) to a fist; x > 0 curls every joint."""
    rotations = {}
    for side in "LR":
        curl = rng.uniform(0.0, 0.3) if rng.random() < 0.2 else rng.uniform(0.3, 1.0)
        for finger in range(1, 6):
            # The thumb bends less; the other fingers bend most at the middle joint.
            full = np.array([25.0, 30.0, 30.0]) if finger == 1 else np.array([70.0, 85.0, 55.0])
            c = np.clip(curl + rng.normal(0, 0.1), 0, 1)
            for joint in range(3):
                rotations[f"finger{finger}-{joint + 1}.{side}"] = rotation_matrix(np.array([c * full[joint], 0, 0]))
    return rotations
