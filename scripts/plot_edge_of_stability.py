"""Sharpness against the edge of stability 2/lr, and the training loss, of a run trained with
handgrad.second_order.SecondOrder on (handgrad.second_order_figure draws it).

    python scripts/train.py --config edge_of_stability --data.root data
    python scripts/plot_edge_of_stability.py                                   # newest run -> its folder
    python scripts/plot_edge_of_stability.py logs/edge_of_stability/version_0 --out docs/edge_of_stability.png
"""

from handgrad.second_order_figure import main

if __name__ == "__main__":
    print(f"wrote {main()}")
