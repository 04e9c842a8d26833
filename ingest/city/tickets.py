"""12345 calls of the simulated city: realistic Chinese text per category, at realistic rates.

Guangzhou's 12345 takes on the order of 40,000 calls a day, about one every two seconds; the
mix below follows the categories' usual share. Pure (a seeded numpy generator).
"""

from __future__ import annotations

import numpy as np

from ingest.city.geography import Grid
from ingest.taxonomy import taxonomy

CALLS_PER_SECOND = 0.45

# category code -> share of calls
SHARE = {
    "sanitation": 0.18, "traffic": 0.17, "noise": 0.16, "drainage": 0.08, "greening": 0.05,
    "utilities": 0.12, "gas": 0.03, "construction": 0.07, "pollution": 0.08, "safety": 0.06,
}  # fmt: skip

TEXT = {
    "sanitation": [
        "{street}{road}垃圾堆放两天没人清运，气味很大",
        "{road}路边有人占道摆卖，行人无法通过",
        "{street}公厕无人打扫，非常脏",
    ],
    "traffic": [
        "{road}红绿灯坏了，路口很乱",
        "{road}路面有个大坑，电动车容易摔倒",
        "小区门口长期有车乱停，堵住消防通道",
        "{road}早晚高峰堵得很厉害",
    ],
    "noise": [
        "{road}工地晚上十一点还在施工，吵得睡不着",
        "楼下商铺音响太大声，影响休息",
        "楼上每天深夜拖动家具",
    ],
    "drainage": [
        "{road}积水很深，已经没过小腿，车辆熄火",
        "{street}下水道堵了，污水漫到路面",
        "{road}井盖不见了，很危险",
    ],
    "greening": [
        "{road}有棵大树倒了，压到路边的车",
        "{street}树枝太长挡住路灯",
        "有人在绿地上乱挖",
    ],
    "utilities": [
        "{street}从早上开始停水，没有通知",
        "{road}水管爆了，水一直往外冒",
        "整栋楼停电两个小时了",
    ],
    "gas": ["楼道里有很浓的煤气味", "{street}有餐馆违规使用液化气瓶"],
    "construction": ["{street}有人在楼顶违章加建", "{road}旁边有违建铁皮房"],
    "pollution": ["{street}附近工厂排放黑烟", "{road}河涌水发黑发臭", "晚上有刺鼻的异味"],
    "safety": [
        "{road}人太多了，很拥挤，担心出事",
        "{street}楼道堆满杂物，消防隐患",
        "{road}山体边坡有泥土滑落",
    ],
}

ROADS = ["中山路", "解放路", "环市路", "天河路", "广州大道", "黄埔大道", "江南大道", "工业大道",
         "新港路", "花城大道", "云城西路", "番禺大道"]  # fmt: skip
FAMILY = list("王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗梁")
GIVEN = list("伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华")


def services_by_category() -> dict[str, list[str]]:
    return {c.code: [s.code for s in c.services] for c in taxonomy().categories}


def draw_calls(
    rng: np.random.Generator, seconds: float, grids: list[Grid], surge: dict[str, float]
) -> list[dict[str, str]]:
    """Open311 POST fields of the calls that arrive within ``seconds``."""
    services = services_by_category()
    calls: list[dict[str, str]] = []
    for category, share in SHARE.items():
        expected = CALLS_PER_SECOND * share * seconds * surge.get(category, 1.0)
        for _ in range(int(rng.poisson(expected))):
            grid = grids[int(rng.integers(len(grids)))]
            template = TEXT[category][int(rng.integers(len(TEXT[category])))]
            road = ROADS[int(rng.integers(len(ROADS)))]
            name = FAMILY[int(rng.integers(len(FAMILY)))] + "".join(
                GIVEN[int(i)] for i in rng.integers(len(GIVEN), size=int(rng.integers(1, 3)))
            )
            calls.append(
                {
                    "service_code": services[category][int(rng.integers(len(services[category])))],
                    "description": template.format(street=grid.street.name_zh, road=road),
                    "lat": f"{grid.lat + float(rng.normal(0, 0.002)):.5f}",
                    "long": f"{grid.lon + float(rng.normal(0, 0.002)):.5f}",
                    "address_string": f"{grid.street.name_zh}{road}",
                    "attribute[district]": grid.street.district,
                    "last_name": name[0],
                    "first_name": name[1:],
                    "phone": "1"
                    + "".join(str(int(d)) for d in rng.integers(3, 10, size=1))
                    + "".join(str(int(d)) for d in rng.integers(0, 10, size=9)),
                }
            )
    return calls
