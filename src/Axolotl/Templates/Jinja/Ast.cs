namespace Axolotl.Templates.Jinja;

/// <summary>A node of the syntax tree; <see cref="Pos"/> is its offset in the template source.</summary>
abstract class Node
{
    public int Pos { get; init; }
}

sealed class ProgramNode(List<Node> body) : Node { public List<Node> Body { get; } = body; }
sealed class IfNode(Node test, List<Node> body, List<Node> alternate) : Node
{
    public Node Test { get; } = test; public List<Node> Body { get; } = body; public List<Node> Alternate { get; } = alternate;
}
sealed class ForNode(Node loopVar, Node iterable, List<Node> body, List<Node> defaultBlock) : Node
{
    public Node LoopVar { get; } = loopVar; public Node Iterable { get; } = iterable;
    public List<Node> Body { get; } = body; public List<Node> DefaultBlock { get; } = defaultBlock;
}
sealed class BreakNode : Node;
sealed class ContinueNode : Node;
sealed class SetNode(Node assignee, Node? value, List<Node> body) : Node
{
    public Node Assignee { get; } = assignee; public Node? Value { get; } = value; public List<Node> Body { get; } = body;
}
sealed class MacroNode(Identifier name, List<Node> args, List<Node> body) : Node
{
    public Identifier Name { get; } = name; public List<Node> Args { get; } = args; public List<Node> Body { get; } = body;
}
sealed class CommentNode : Node;
sealed class CallStatement(CallExpr call, List<Node>? callerArgs, List<Node> body) : Node
{
    public CallExpr Call { get; } = call; public List<Node>? CallerArgs { get; } = callerArgs; public List<Node> Body { get; } = body;
}
sealed class FilterStatement(Node filter, List<Node> body) : Node
{
    public Node Filter { get; } = filter; public List<Node> Body { get; } = body;
}

sealed class MemberExpr(Node obj, Node property, bool computed) : Node
{
    public Node Object { get; } = obj; public Node Property { get; } = property; public bool Computed { get; } = computed;
}
sealed class CallExpr(Node callee, List<Node> args) : Node { public Node Callee { get; } = callee; public List<Node> Args { get; } = args; }
sealed class Identifier(string name) : Node { public string Name { get; } = name; }
sealed class IntLiteral(double value) : Node { public double Value { get; } = value; }
sealed class FloatLiteral(double value) : Node { public double Value { get; } = value; }
sealed class StrLiteral(string value) : Node { public string Value { get; } = value; }
sealed class ArrayLiteral(List<Node> items) : Node { public List<Node> Items { get; } = items; }
sealed class TupleLiteral(List<Node> items) : Node { public List<Node> Items { get; } = items; }
sealed class ObjectLiteral(List<(Node Key, Node Value)> entries) : Node { public List<(Node Key, Node Value)> Entries { get; } = entries; }
sealed class BinaryExpr(string op, Node left, Node right) : Node
{
    public string Op { get; } = op; public Node Left { get; } = left; public Node Right { get; } = right;
}
/// <summary>operand | filter, the filter an <see cref="Identifier"/> or a <see cref="CallExpr"/> on one.</summary>
sealed class FilterExpr(Node operand, Node filter) : Node { public Node Operand { get; } = operand; public Node Filter { get; } = filter; }
sealed class TestExpr(Node operand, bool negate, Identifier test) : Node
{
    public Node Operand { get; } = operand; public bool Negate { get; } = negate; public Identifier Test { get; } = test;
}
sealed class UnaryExpr(string op, Node argument) : Node { public string Op { get; } = op; public Node Argument { get; } = argument; }
sealed class SliceExpr(Node? start, Node? stop, Node? step) : Node
{
    public Node? Start { get; } = start; public Node? Stop { get; } = stop; public Node? Step { get; } = step;
}
sealed class KeywordArg(Identifier key, Node value) : Node { public Identifier Key { get; } = key; public Node Value { get; } = value; }
sealed class SpreadExpr(Node argument) : Node { public Node Argument { get; } = argument; }
sealed class KeywordSpreadExpr(Node argument) : Node { public Node Argument { get; } = argument; }
/// <summary>`a if test` without else: a, or undefined; in a for loop, a filter on the items.</summary>
sealed class SelectExpr(Node lhs, Node test) : Node { public Node Lhs { get; } = lhs; public Node Test { get; } = test; }
sealed class Ternary(Node condition, Node trueExpr, Node falseExpr) : Node
{
    public Node Condition { get; } = condition; public Node TrueExpr { get; } = trueExpr; public Node FalseExpr { get; } = falseExpr;
}
