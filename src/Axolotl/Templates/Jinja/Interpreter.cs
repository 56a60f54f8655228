using System.Globalization;
using System.Text;

namespace Axolotl.Templates.Jinja;

/// <summary>An error while rendering; <see cref="Pos"/> is the source offset of the innermost node that failed.</summary>
sealed class TemplateRuntimeError(string message, bool raised = false) : Exception(message)
{
    public int Pos { get; set; } = -1;
    /// <summary>True when the template itself raised it (raise_exception).</summary>
    public bool Raised { get; } = raised;
}

sealed class BreakSignal : Exception;
sealed class ContinueSignal : Exception;

/// <summary>A variable scope. Lookups walk up to the global scope; assignments stay in the scope they are made in.</summary>
sealed class Env(Env? parent = null)
{
    readonly Dictionary<string, Value> _vars = new();
    public Env? Parent { get; } = parent;

    public Value Lookup(string name)
    {
        for (var e = this; e is not null; e = e.Parent)
            if (e._vars.TryGetValue(name, out var v)) return v;
        return UndefinedValue.Instance;
    }

    public void Set(string name, Value value) => _vars[name] = value;

    public void Declare(string name, Value value)
    {
        if (!_vars.TryAdd(name, value)) throw new TemplateRuntimeError($"Variable already declared: {name}");
    }
}

/// <summary>Evaluates a parsed template with @huggingface/jinja's semantics, error messages included.</summary>
sealed class Interpreter(TimeProvider clock)
{
    static readonly string[] MonthsLong = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
    static readonly string[] MonthsShort = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

    /// <summary>The global scope: constants and functions, then the caller's variables.</summary>
    public Env Globals(IEnumerable<KeyValuePair<string, Value>> variables)
    {
        var env = new Env();
        env.Declare("namespace", new FuncValue((args, _) => MakeNamespace(args)));
        env.Declare("false", BoolValue.False);
        env.Declare("true", BoolValue.True);
        env.Declare("none", NullValue.Instance);
        env.Declare("raise_exception", new FuncValue((args, _) =>
            throw new TemplateRuntimeError(args.Count == 0 || args[0] is UndefinedValue ? "" : Js.RawString(args[0]), raised: true)));
        env.Declare("range", new FuncValue((args, _) => Range(args)));
        env.Declare("strftime_now", new FuncValue((args, _) => new StrValue(Strftime(clock.GetLocalNow(), args.Count > 0 ? Js.RawString(args[0]) : "undefined"))));
        env.Declare("True", BoolValue.True);
        env.Declare("False", BoolValue.False);
        env.Declare("None", NullValue.Instance);
        foreach (var (name, value) in variables) env.Declare(name, value);
        return env;
    }

    public string Run(ProgramNode program, Env env) => EvaluateBlock(program.Body, env).V;

    static Value Range(List<Value> args)
    {
        static double N(Value? v) => v switch { IntValue i => i.V, FloatValue f => f.V, BoolValue b => b.V ? 1 : 0, _ => double.NaN };
        double start = N(args.ElementAtOrDefault(0)), step = args.Count > 2 ? N(args[2]) : 1, stop;
        if (args.Count < 2) { stop = start; start = 0; } else stop = N(args[1]);
        if (step == 0) throw new TemplateRuntimeError("range() step must not be zero");
        var result = new List<Value>();
        if (step > 0) for (var i = start; i < stop; i += step) result.Add(Number(i));
        else for (var i = start; i > stop; i += step) result.Add(Number(i));
        return new ArrayValue(result);
    }

    static Value Number(double d) => d % 1 == 0 ? new IntValue(d) : new FloatValue(d);

    static string Strftime(DateTimeOffset date, string format)
    {
        var sb = new StringBuilder();
        for (int i = 0; i < format.Length; i++)
        {
            if (format[i] == '%' && i + 1 < format.Length && "YmdbBHM%".Contains(format[i + 1]))
            {
                sb.Append(format[++i] switch
                {
                    'Y' => date.Year.ToString(CultureInfo.InvariantCulture),
                    'm' => date.Month.ToString("00", CultureInfo.InvariantCulture),
                    'd' => date.Day.ToString("00", CultureInfo.InvariantCulture),
                    'b' => MonthsShort[date.Month - 1],
                    'B' => MonthsLong[date.Month - 1],
                    'H' => date.Hour.ToString("00", CultureInfo.InvariantCulture),
                    'M' => date.Minute.ToString("00", CultureInfo.InvariantCulture),
                    _ => "%",
                });
            }
            else sb.Append(format[i]);
        }
        return sb.ToString();
    }

    static NamespaceValue MakeNamespace(List<Value> args)
    {
        var positional = args.ToList();
        KwargsValue? kwargs = null;
        if (positional.Count > 0 && positional[^1] is KwargsValue k) { kwargs = k; positional.RemoveAt(positional.Count - 1); }
        if (positional.Count > 1) throw new TemplateRuntimeError($"namespace expected at most 1 argument, got {positional.Count}");
        var entries = new OrderedDictionary<string, Value>();
        if (positional.Count == 1)
        {
            switch (positional[0])
            {
                case ObjValue o:
                    foreach (var (key, value) in o.Map) entries[key] = value;
                    break;
                case ArrayValue a:
                    foreach (var pair in a.Items)
                    {
                        List<Value>? values = pair switch
                        {
                            ArrayValue p => p.Items,
                            StrValue s => Js.CodePoints(s.V).Select(c => (Value)new StrValue(c)).ToList(),
                            _ => null,
                        };
                        if (values is null || values.Count != 2)
                            throw new TemplateRuntimeError("namespace expected an object or an iterable of [key, value] pairs");
                        if (values[0] is not StrValue key) throw new TemplateRuntimeError("namespace keys must be strings");
                        entries[key.V] = values[1];
                    }
                    break;
                default:
                    throw new TemplateRuntimeError($"'{positional[0].TypeName}' object is not iterable");
            }
        }
        if (kwargs is not null) foreach (var (key, value) in kwargs.Map) entries[key] = value;
        return new NamespaceValue(entries);
    }

    // ---- tests -------------------------------------------------------------------------------------------------

    static readonly HashSet<string> TestNames =
    [
        "boolean", "callable", "odd", "even", "false", "true", "none", "string", "number", "integer", "iterable", "mapping",
        "sequence", "lower", "upper", "defined", "undefined", "equalto", "eq",
    ];

    static bool? Test(string name, Value operand, Value? arg)
    {
        switch (name)
        {
            case "boolean": return operand is BoolValue;
            case "callable": return operand is FuncValue;
            case "odd":
            case "even":
                if (operand is not IntValue i) throw new TemplateRuntimeError($"cannot {name} on {operand.TypeName}");
                return (i.V % 2 != 0) == (name == "odd");
            case "false": return operand is BoolValue { V: false };
            case "true": return operand is BoolValue { V: true };
            case "none": return operand is NullValue;
            case "string": return operand is StrValue;
            case "number": return operand is IntValue or FloatValue;
            case "integer": return operand is IntValue;
            case "iterable": return operand.TypeName is "ArrayValue" or "StringValue";
            case "mapping": return operand is ObjValue;
            case "sequence": return operand is ArrayValue or ObjValue or StrValue;
            case "lower": return operand is StrValue s && s.V == Js.ToLower(s.V);
            case "upper": return operand is StrValue u && u.V == Js.ToUpper(u.V);
            case "defined": return operand is not UndefinedValue;
            case "undefined": return operand is UndefinedValue;
            case "equalto":
            case "eq": return arg is null ? operand is UndefinedValue : Js.StrictEquals(operand, arg);
            default: return null;
        }
    }

    // ---- evaluation ----------------------------------------------------------------------------------------

    StrValue EvaluateBlock(List<Node> statements, Env env)
    {
        var sb = new StringBuilder();
        foreach (var statement in statements)
        {
            var value = Evaluate(statement, env);
            if (value is not (NullValue or UndefinedValue)) sb.Append(value.Render());
        }
        return new StrValue(sb.ToString());
    }

    Value Evaluate(Node? node, Env env)
    {
        if (node is null) return UndefinedValue.Instance;
        // Runaway recursion (a macro calling itself) must end in an error, not a crashed process.
        if (!System.Runtime.CompilerServices.RuntimeHelpers.TryEnsureSufficientExecutionStack())
            throw new TemplateRuntimeError("Maximum call stack size exceeded") { Pos = node.Pos };
        try
        {
            return EvaluateNode(node, env);
        }
        catch (TemplateRuntimeError e) when (e.Pos < 0)
        {
            e.Pos = node.Pos;
            throw;
        }
    }

    Value EvaluateNode(Node node, Env env) => node switch
    {
        ProgramNode p => EvaluateBlock(p.Body, env),
        SetNode s => EvaluateSet(s, env),
        IfNode i => EvaluateBlock(Evaluate(i.Test, env).Truthy ? i.Body : i.Alternate, env),
        ForNode f => EvaluateFor(f, env),
        MacroNode m => EvaluateMacro(m, env),
        CallStatement c => EvaluateCallStatement(c, env),
        BreakNode => throw new BreakSignal(),
        ContinueNode => throw new ContinueSignal(),
        IntLiteral i => new IntValue(i.Value),
        FloatLiteral f => new FloatValue(f.Value),
        StrLiteral s => new StrValue(s.Value),
        ArrayLiteral a => new ArrayValue(a.Items.Select(x => Evaluate(x, env)).ToList()),
        TupleLiteral t => new TupleValue(t.Items.Select(x => Evaluate(x, env)).ToList()),
        ObjectLiteral o => EvaluateObjectLiteral(o, env),
        Identifier id => env.Lookup(id.Name),
        CallExpr c => EvaluateCall(c, env),
        MemberExpr m => EvaluateMember(m, env),
        UnaryExpr u => EvaluateUnary(u, env),
        BinaryExpr b => EvaluateBinary(b, env),
        FilterExpr f => ApplyFilter(Evaluate(f.Operand, env), f.Filter, env),
        FilterStatement f => ApplyFilter(EvaluateBlock(f.Body, env), f.Filter, env),
        TestExpr t => EvaluateTest(t, env),
        SelectExpr s => Evaluate(s.Test, env).Truthy ? Evaluate(s.Lhs, env) : UndefinedValue.Instance,
        Ternary t => Evaluate(t.Condition, env).Truthy ? Evaluate(t.TrueExpr, env) : Evaluate(t.FalseExpr, env),
        CommentNode => NullValue.Instance,
        _ => throw new TemplateRuntimeError($"Unknown node type: {node.GetType().Name}"),
    };

    Value EvaluateObjectLiteral(ObjectLiteral o, Env env)
    {
        var map = new OrderedDictionary<string, Value>();
        foreach (var (keyNode, valueNode) in o.Entries)
        {
            var key = Evaluate(keyNode, env);
            if (key is not StrValue s) throw new TemplateRuntimeError($"Object keys must be strings: got {key.TypeName}");
            map[s.V] = Evaluate(valueNode, env);
        }
        return new ObjValue(map);
    }

    BoolValue EvaluateTest(TestExpr t, Env env)
    {
        var operand = Evaluate(t.Operand, env);
        var result = Test(t.Test.Name, operand, null) ?? throw new TemplateRuntimeError($"Unknown test: {t.Test.Name}");
        return BoolValue.Of(t.Negate ? !result : result);
    }

    Value EvaluateUnary(UnaryExpr u, Env env)
    {
        var argument = Evaluate(u.Argument, env);
        if (u.Op == "not") return BoolValue.Of(!argument.Truthy);
        double sign = u.Op == "-" ? -1 : 1;
        return argument switch
        {
            IntValue i => new IntValue(sign * i.V),
            FloatValue f => new FloatValue(sign * f.V),
            BoolValue b => new IntValue(sign * (b.V ? 1 : 0)),
            _ => throw new TemplateRuntimeError($"Unknown operator \"{u.Op}\" for {argument.TypeName}"),
        };
    }

    static bool IsNumericLike(Value v) => v is IntValue or FloatValue or BoolValue;
    static double NumericValue(Value v) => v switch { IntValue i => i.V, FloatValue f => f.V, BoolValue b => b.V ? 1 : 0, _ => double.NaN };

    Value EvaluateBinary(BinaryExpr node, Env env)
    {
        var left = Evaluate(node.Left, env);
        var op = node.Op;
        if (op == "and") return left.Truthy ? Evaluate(node.Right, env) : left;
        if (op == "or") return left.Truthy ? left : Evaluate(node.Right, env);

        var right = Evaluate(node.Right, env);
        if (op == "==") return BoolValue.Of(Js.LooseEquals(left, right));
        if (op == "!=") return BoolValue.Of(!Js.LooseEquals(left, right));

        if (left is UndefinedValue || right is UndefinedValue)
        {
            if (right is UndefinedValue && op is "in" or "not in") return BoolValue.Of(op == "not in");
            throw new TemplateRuntimeError($"Cannot perform operation {op} on undefined values");
        }
        if (left is NullValue || right is NullValue) throw new TemplateRuntimeError("Cannot perform operation on null values");
        if (op == "~") return new StrValue(Js.RawString(left) + Js.RawString(right));
        if (op == "**" && IsNumericLike(left) && IsNumericLike(right))
        {
            double a = NumericValue(left), b = NumericValue(right);
            if (a == 0 && b < 0) throw new TemplateRuntimeError("0.0 cannot be raised to a negative power");
            var result = Math.Pow(a, b);
            if (!double.IsFinite(result)) throw new TemplateRuntimeError("Exponentiation result is not a finite real number");
            return left is FloatValue || right is FloatValue || b < 0 ? new FloatValue(result) : new IntValue(result);
        }
        if (left is IntValue or FloatValue && right is IntValue or FloatValue)
        {
            double a = NumericValue(left), b = NumericValue(right);
            bool isFloat = left is FloatValue || right is FloatValue;
            Value Num(double r) => isFloat ? new FloatValue(r) : new IntValue(r);
            switch (op)
            {
                case "+": return Num(a + b);
                case "-": return Num(a - b);
                case "*": return Num(a * b);
                case "/": return new FloatValue(a / b);
                case "//": return Num(Math.Floor(a / b));
                case "%": return Num(a % b);
                case "<": return BoolValue.Of(a < b);
                case ">": return BoolValue.Of(a > b);
                case ">=": return BoolValue.Of(a >= b);
                case "<=": return BoolValue.Of(a <= b);
            }
        }
        else if (left is ArrayValue la && right is ArrayValue ra)
        {
            if (op == "+") return new ArrayValue([.. la.Items, .. ra.Items]);
        }
        else if (right is ArrayValue arr)
        {
            bool member = arr.Items.Any(x => Js.StrictEquals(x, left));
            if (op == "in") return BoolValue.Of(member);
            if (op == "not in") return BoolValue.Of(!member);
        }
        if ((left is StrValue || right is StrValue) && op == "+") return new StrValue(Js.RawString(left) + Js.RawString(right));
        if (left is StrValue ls && right is StrValue rs)
        {
            if (op == "in") return BoolValue.Of(rs.V.Contains(ls.V, StringComparison.Ordinal));
            if (op == "not in") return BoolValue.Of(!rs.V.Contains(ls.V, StringComparison.Ordinal));
        }
        if (left is StrValue key && right is ObjValue obj)
        {
            if (op == "in") return BoolValue.Of(obj.Map.ContainsKey(key.V));
            if (op == "not in") return BoolValue.Of(!obj.Map.ContainsKey(key.V));
        }
        throw new TemplateRuntimeError($"Unknown operator \"{op}\" between {left.TypeName} and {right.TypeName}");
    }

    (List<Value> Args, OrderedDictionary<string, Value> Kwargs) EvaluateArguments(List<Node> args, Env env)
    {
        var positional = new List<Value>();
        var keyword = new OrderedDictionary<string, Value>();
        void AddKeyword(string key, Value value)
        {
            if (!keyword.TryAdd(key, value)) throw new TemplateRuntimeError($"Got multiple values for keyword argument '{key}'");
        }
        foreach (var argument in args)
        {
            if (argument is SpreadExpr spread)
            {
                var val = Evaluate(spread.Argument, env);
                if (val is not ArrayValue a) throw new TemplateRuntimeError($"Cannot unpack non-iterable type: {val.TypeName}");
                positional.AddRange(a.Items);
            }
            else if (argument is not (KeywordArg or KeywordSpreadExpr)) positional.Add(Evaluate(argument, env));
        }
        foreach (var argument in args)
        {
            if (argument is KeywordArg kw) AddKeyword(kw.Key.Name, Evaluate(kw.Value, env));
            else if (argument is KeywordSpreadExpr ks)
            {
                var val = Evaluate(ks.Argument, env);
                if (val is not ObjValue o) throw new TemplateRuntimeError($"Argument after ** must be a mapping, not {val.TypeName}");
                foreach (var (key, value) in o.Map) AddKeyword(key, value);
            }
        }
        return (positional, keyword);
    }

    Value EvaluateCall(CallExpr expr, Env env)
    {
        var (args, kwargs) = EvaluateArguments(expr.Args, env);
        if (kwargs.Count > 0) args.Add(new KwargsValue(kwargs));
        var fn = Evaluate(expr.Callee, env);
        if (fn is not FuncValue f) throw new TemplateRuntimeError($"Cannot call something that is not a function: got {fn.TypeName}");
        return f.Call(args, env);
    }

    static List<T> Slice<T>(List<T> array, double? start, double? stop, double? stepArg)
    {
        double step = stepArg ?? 1;
        int direction = Math.Sign(step);
        int len = array.Count;
        double s, e;
        if (direction >= 0)
        {
            s = start ?? 0; s = s < 0 ? Math.Max(len + s, 0) : Math.Min(s, len);
            e = stop ?? len; e = e < 0 ? Math.Max(len + e, 0) : Math.Min(e, len);
        }
        else
        {
            s = start ?? len - 1; s = s < 0 ? Math.Max(len + s, -1) : Math.Min(s, len - 1);
            e = stop ?? -1; e = e < -1 ? Math.Max(len + e, -1) : Math.Min(e, len - 1);
        }
        var result = new List<T>();
        for (double i = s; direction * i < direction * e; i += step)
            result.Add(i >= 0 && i < len && i % 1 == 0 ? array[(int)i] : default!);
        return result;
    }

    Value EvaluateSlice(Value obj, SliceExpr expr, Env env)
    {
        if (obj is not (ArrayValue or StrValue)) throw new TemplateRuntimeError("Slice object must be an array or string");
        var start = Evaluate(expr.Start, env);
        var stop = Evaluate(expr.Stop, env);
        var step = Evaluate(expr.Step, env);
        if (start is not (IntValue or UndefinedValue)) throw new TemplateRuntimeError("Slice start must be numeric or undefined");
        if (stop is not (IntValue or UndefinedValue)) throw new TemplateRuntimeError("Slice stop must be numeric or undefined");
        if (step is not (IntValue or UndefinedValue)) throw new TemplateRuntimeError("Slice step must be numeric or undefined");
        double? N(Value v) => v is IntValue i ? i.V : null;
        if (obj is ArrayValue a)
            return new ArrayValue(Slice(a.Items, N(start), N(stop), N(step)).Select(x => x ?? UndefinedValue.Instance).ToList());
        return new StrValue(string.Concat(Slice(Js.CodePoints(((StrValue)obj).V), N(start), N(stop), N(step)).Select(x => x ?? "")));
    }

    static Value? At<T>(List<T> list, double index, Func<T, Value> wrap)
    {
        if (double.IsNaN(index)) index = 0;
        index = Math.Truncate(index);
        if (index < 0) index += list.Count;
        return index >= 0 && index < list.Count ? wrap(list[(int)index]) : null;
    }

    Value EvaluateMember(MemberExpr expr, Env env)
    {
        var obj = Evaluate(expr.Object, env);
        Value property;
        if (expr.Computed)
        {
            if (expr.Property is SliceExpr slice) return EvaluateSlice(obj, slice, env);
            property = Evaluate(expr.Property, env);
        }
        else if (expr.Property is IntLiteral il) property = new IntValue(il.Value);
        else property = new StrValue(((Identifier)expr.Property).Name);

        Value? value;
        if (obj is ObjValue or NamespaceValue)
        {
            if (property is not StrValue key) throw new TemplateRuntimeError($"Cannot access property with non-string: got {property.TypeName}");
            var map = obj is ObjValue o ? o.Map : ((NamespaceValue)obj).Map;
            value = map.TryGetValue(key.V, out var v) ? v : obj is ObjValue ov ? ObjectBuiltin(ov, key.V) : null;
        }
        else if (obj is ArrayValue or StrValue)
        {
            if (property is IntValue index)
            {
                value = obj is StrValue s
                    ? At(s.V.ToCharArray().ToList(), index.V, c => new StrValue(c.ToString()))
                    : At(((ArrayValue)obj).Items, index.V, x => x);
            }
            else if (property is StrValue key)
                value = obj is StrValue s ? StringBuiltin(s, key.V) : key.V == "length" ? new IntValue(((ArrayValue)obj).Items.Count) : null;
            else throw new TemplateRuntimeError($"Cannot access property with non-string/non-number: got {property.TypeName}");
        }
        else
        {
            if (property is not StrValue) throw new TemplateRuntimeError($"Cannot access property with non-string: got {property.TypeName}");
            value = null;
        }
        return value ?? UndefinedValue.Instance;
    }

    Value EvaluateSet(SetNode node, Env env)
    {
        var rhs = node.Value is not null ? Evaluate(node.Value, env) : EvaluateBlock(node.Body, env);
        switch (node.Assignee)
        {
            case Identifier id:
                env.Set(id.Name, rhs);
                break;
            case TupleLiteral tuple:
            {
                if (rhs is not ArrayValue arr) throw new TemplateRuntimeError($"Cannot unpack non-iterable type in set: {rhs.TypeName}");
                if (arr.Items.Count != tuple.Items.Count)
                    throw new TemplateRuntimeError($"Too {(tuple.Items.Count > arr.Items.Count ? "few" : "many")} items to unpack in set");
                for (int i = 0; i < tuple.Items.Count; i++)
                {
                    if (tuple.Items[i] is not Identifier target)
                        throw new TemplateRuntimeError($"Cannot unpack to non-identifier in set: {AstTypeName(tuple.Items[i])}");
                    env.Set(target.Name, arr.Items[i]);
                }
                break;
            }
            case MemberExpr member:
            {
                var obj = Evaluate(member.Object, env);
                if (obj is not NamespaceValue ns) throw new TemplateRuntimeError("cannot assign attribute on non-namespace object");
                if (member.Property is not Identifier prop) throw new TemplateRuntimeError("Cannot assign to member with non-identifier property");
                ns.Map[prop.Name] = rhs;
                break;
            }
            default:
                throw new TemplateRuntimeError($"Invalid LHS inside assignment expression: {AstTypeName(node.Assignee)}");
        }
        return NullValue.Instance;
    }

    static string AstTypeName(Node node) => node switch
    {
        IntLiteral => "IntegerLiteral", StrLiteral => "StringLiteral", MemberExpr => "MemberExpression", CallExpr => "CallExpression",
        BinaryExpr => "BinaryExpression", _ => node.GetType().Name,
    };

    Value EvaluateFor(ForNode node, Env env)
    {
        var scope = new Env(env);
        Value iterable;
        Node? test = null;
        if (node.Iterable is SelectExpr select)
        {
            iterable = Evaluate(select.Lhs, scope);
            test = select.Test;
        }
        else iterable = Evaluate(node.Iterable, scope);

        List<Value> source = iterable switch
        {
            ArrayValue a => a.Items,
            ObjValue o => o.Map.Keys.Select(k => (Value)new StrValue(k)).ToList(),
            _ => throw new TemplateRuntimeError($"Expected iterable or object type in for loop: got {iterable.TypeName}"),
        };

        var items = new List<Value>();
        var binders = new List<Action<Env>>();
        foreach (var current in source)
        {
            Action<Env> bind;
            if (node.LoopVar is Identifier id) bind = s => s.Set(id.Name, current);
            else
            {
                var loopVars = ((TupleLiteral)node.LoopVar).Items;
                if (current.TypeName != "ArrayValue") throw new TemplateRuntimeError($"Cannot unpack non-iterable type: {current.TypeName}");
                var c = (ArrayValue)current;
                if (loopVars.Count != c.Items.Count)
                    throw new TemplateRuntimeError($"Too {(loopVars.Count > c.Items.Count ? "few" : "many")} items to unpack");
                bind = s =>
                {
                    for (int j = 0; j < loopVars.Count; j++)
                    {
                        if (loopVars[j] is not Identifier v) throw new TemplateRuntimeError($"Cannot unpack non-identifier type: {AstTypeName(loopVars[j])}");
                        s.Set(v.Name, c.Items[j]);
                    }
                };
            }
            if (test is not null)
            {
                var loopScope = new Env(scope);
                bind(loopScope);
                if (!Evaluate(test, loopScope).Truthy) continue;
            }
            items.Add(current);
            binders.Add(bind);
        }

        var result = new StringBuilder();
        bool noIteration = true;
        for (int i = 0; i < items.Count; i++)
        {
            var loop = new OrderedDictionary<string, Value>
            {
                ["index"] = new IntValue(i + 1),
                ["index0"] = new IntValue(i),
                ["revindex"] = new IntValue(items.Count - i),
                ["revindex0"] = new IntValue(items.Count - i - 1),
                ["first"] = BoolValue.Of(i == 0),
                ["last"] = BoolValue.Of(i == items.Count - 1),
                ["length"] = new IntValue(items.Count),
                ["previtem"] = i > 0 ? items[i - 1] : UndefinedValue.Instance,
                ["nextitem"] = i < items.Count - 1 ? items[i + 1] : UndefinedValue.Instance,
            };
            scope.Set("loop", new ObjValue(loop));
            binders[i](scope);
            try
            {
                result.Append(EvaluateBlock(node.Body, scope).V);
            }
            catch (ContinueSignal) { continue; }
            catch (BreakSignal) { break; }
            noIteration = false;
        }
        // As the renderer does: the else block also runs when every iteration ended in continue or the first broke.
        if (noIteration) result.Append(EvaluateBlock(node.DefaultBlock, scope).V);
        return new StrValue(result.ToString());
    }

    // ---- macros and call blocks ----------------------------------------------------------------------------------

    static (string Name, Node? Default) Parameter(Node p) => p is KeywordArg k ? (k.Key.Name, k.Value) : (((Identifier)p).Name, null);

    /// <summary>Whether the body reads `kwargs`/`varargs` before declaring them (then the macro accepts extra arguments).</summary>
    static HashSet<string> AccessedSpecialArguments(List<Node> parameters, List<Node> body)
    {
        var declared = new HashSet<string>();
        var accessed = new HashSet<string>();
        static bool Special(string n) => n is "kwargs" or "varargs";
        void Declare(string n) { if (Special(n)) declared.Add(n); }
        void DeclareTarget(Node t)
        {
            if (t is Identifier i) Declare(i.Name);
            else if (t is TupleLiteral tl) foreach (var x in tl.Items) DeclareTarget(x);
        }
        void VisitDefaults(IEnumerable<Node> args) { foreach (var a in args) if (Parameter(a).Default is { } d) Visit(d); }
        void VisitFilter(Node f) { if (f is CallExpr c) VisitAll(c.Args); }
        void VisitAll(IEnumerable<Node?> nodes) { foreach (var n in nodes) Visit(n); }
        void Visit(Node? node)
        {
            switch (node)
            {
                case null: return;
                case ForNode f:
                    DeclareTarget(f.LoopVar);
                    if (f.Iterable is SelectExpr se) { Visit(se.Lhs); VisitAll(f.Body); VisitAll(f.DefaultBlock); Visit(se.Test); }
                    else { Visit(f.Iterable); VisitAll(f.Body); VisitAll(f.DefaultBlock); }
                    return;
                case SetNode s: DeclareTarget(s.Assignee); Visit(s.Value); VisitAll(s.Body); return;
                case MacroNode m: foreach (var a in m.Args) Declare(Parameter(a).Name); VisitDefaults(m.Args); VisitAll(m.Body); return;
                case CallStatement cs:
                    Visit(cs.Call);
                    foreach (var a in cs.CallerArgs ?? []) Declare(Parameter(a).Name);
                    VisitDefaults(cs.CallerArgs ?? []);
                    VisitAll(cs.Body);
                    return;
                case FilterStatement fs: VisitAll(fs.Body); VisitFilter(fs.Filter); return;
                case Identifier id: if (Special(id.Name) && !declared.Contains(id.Name)) accessed.Add(id.Name); return;
                case MemberExpr me: Visit(me.Object); if (me.Computed) Visit(me.Property); return;
                case FilterExpr fe: Visit(fe.Operand); VisitFilter(fe.Filter); return;
                case TestExpr te: Visit(te.Operand); return;
                case SelectExpr sel: Visit(sel.Test); Visit(sel.Lhs); return;
                case KeywordArg kw: Visit(kw.Value); return;
                case IfNode i: Visit(i.Test); VisitAll(i.Body); VisitAll(i.Alternate); return;
                case CallExpr c: Visit(c.Callee); VisitAll(c.Args); return;
                case BinaryExpr b: Visit(b.Left); Visit(b.Right); return;
                case UnaryExpr u: Visit(u.Argument); return;
                case ArrayLiteral al: VisitAll(al.Items); return;
                case TupleLiteral tl: VisitAll(tl.Items); return;
                case ObjectLiteral ol: foreach (var (k, v) in ol.Entries) { Visit(k); Visit(v); } return;
                case SliceExpr sl: Visit(sl.Start); Visit(sl.Stop); Visit(sl.Step); return;
                case SpreadExpr sp: Visit(sp.Argument); return;
                case KeywordSpreadExpr ksp: Visit(ksp.Argument); return;
                case Ternary t: Visit(t.Condition); Visit(t.TrueExpr); Visit(t.FalseExpr); return;
                default: return;
            }
        }
        foreach (var p in parameters) Declare(Parameter(p).Name);
        VisitAll(body);
        return accessed;
    }

    void BindMacroArguments(string displayName, List<Node> parameters, HashSet<string> special, List<Value> args, Env scope)
    {
        var positional = args.ToList();
        var keyword = new OrderedDictionary<string, Value>();
        if (positional.Count > 0 && positional[^1] is KwargsValue kw)
        {
            foreach (var (k, v) in kw.Map) keyword[k] = v;
            positional.RemoveAt(positional.Count - 1);
        }
        var pendingDefaults = new List<(string, Node)>();
        for (int i = 0; i < parameters.Count; i++)
        {
            var (name, defaultValue) = Parameter(parameters[i]);
            var value = i < positional.Count ? positional[i] : null;
            if (value is null && keyword.Remove(name, out var fromKeyword)) value = fromKeyword;
            if (value is null && defaultValue is not null) pendingDefaults.Add((name, defaultValue));
            scope.Set(name, value ?? UndefinedValue.Instance);
        }
        if (special.Contains("kwargs")) scope.Set("kwargs", new ObjValue(keyword));
        else if (keyword.Count > 0)
            throw new TemplateRuntimeError($"macro {displayName} takes no keyword argument '{keyword.GetAt(0).Key}'");
        if (special.Contains("varargs")) scope.Set("varargs", new ArrayValue(positional.Skip(parameters.Count).ToList()));
        else if (positional.Count > parameters.Count)
            throw new TemplateRuntimeError($"macro {displayName} takes not more than {parameters.Count} argument(s)");
        foreach (var (name, defaultValue) in pendingDefaults) scope.Set(name, Evaluate(defaultValue, scope));
    }

    Value EvaluateMacro(MacroNode node, Env env)
    {
        var special = AccessedSpecialArguments(node.Args, node.Body);
        // Macros see the caller's scope (dynamic scoping), as in the renderer.
        env.Set(node.Name.Name, new FuncValue((args, scope) =>
        {
            var macroScope = new Env(scope);
            BindMacroArguments($"'{node.Name.Name}'", node.Args, special, args, macroScope);
            return EvaluateBlock(node.Body, macroScope);
        }));
        return NullValue.Instance;
    }

    Value EvaluateCallStatement(CallStatement node, Env env)
    {
        var parameters = node.CallerArgs ?? [];
        var special = AccessedSpecialArguments(parameters, node.Body);
        var caller = new FuncValue((callerArgs, _) =>
        {
            var callEnv = new Env(env);
            BindMacroArguments("None", parameters, special, callerArgs, callEnv);
            return EvaluateBlock(node.Body, callEnv);
        });
        var (macroArgs, macroKwargs) = EvaluateArguments(node.Call.Args, env);
        macroArgs.Add(new KwargsValue(macroKwargs));
        var fn = Evaluate(node.Call.Callee, env);
        if (fn is not FuncValue f) throw new TemplateRuntimeError($"Cannot call something that is not a function: got {fn.TypeName}");
        var newEnv = new Env(env);
        newEnv.Set("caller", caller);
        return f.Call(macroArgs, newEnv);
    }

    // ---- builtins ----------------------------------------------------------------------------------------------

    Value? ObjectBuiltin(ObjValue obj, string name) => name switch
    {
        "get" => new FuncValue((args, _) =>
        {
            var key = args.ElementAtOrDefault(0);
            if (key is not StrValue k) throw new TemplateRuntimeError($"Object key must be a string: got {key?.TypeName ?? "undefined"}");
            return obj.Map.TryGetValue(k.V, out var v) ? v : args.ElementAtOrDefault(1) ?? NullValue.Instance;
        }),
        "items" => new FuncValue((_, _) => obj.Items()),
        "keys" => new FuncValue((_, _) => new ArrayValue(obj.Map.Keys.Select(k => (Value)new StrValue(k)).ToList())),
        "values" => new FuncValue((_, _) => new ArrayValue(obj.Map.Values.ToList())),
        "dictsort" => new FuncValue((args, _) => DictSort(obj, args)),
        _ => null,
    };

    static Value DictSort(ObjValue obj, List<Value> args)
    {
        var kwargs = new OrderedDictionary<string, Value>();
        var positional = new List<Value>();
        foreach (var a in args) { if (a is KwargsValue k) kwargs = k.Map; else positional.Add(a); }
        var caseSensitive = positional.ElementAtOrDefault(0) ?? kwargs.GetValueOrDefault("case_sensitive") ?? BoolValue.False;
        if (caseSensitive is not BoolValue cs) throw new TemplateRuntimeError("case_sensitive must be a boolean");
        var by = positional.ElementAtOrDefault(1) ?? kwargs.GetValueOrDefault("by") ?? new StrValue("key");
        if (by is not StrValue b) throw new TemplateRuntimeError("by must be a string");
        if (b.V is not ("key" or "value")) throw new TemplateRuntimeError("by must be either 'key' or 'value'");
        var reverse = positional.ElementAtOrDefault(2) ?? kwargs.GetValueOrDefault("reverse") ?? BoolValue.False;
        if (reverse is not BoolValue r) throw new TemplateRuntimeError("reverse must be a boolean");
        int index = b.V == "key" ? 0 : 1;
        var items = obj.Items().Items.Cast<ArrayValue>().ToList();
        return new ArrayValue(StableSort(items, (x, y) =>
        {
            var c = Compare(x.Items[index], y.Items[index], cs.V);
            return r.V ? -c : c;
        }).Cast<Value>().ToList());
    }

    // A stable merge sort (as JavaScript's sort is stable) that lets the comparison's errors through unwrapped.
    static List<T> StableSort<T>(List<T> items, Comparison<T> comparison)
    {
        if (items.Count <= 1) return items.ToList();
        int mid = items.Count / 2;
        var left = StableSort(items.GetRange(0, mid), comparison);
        var right = StableSort(items.GetRange(mid, items.Count - mid), comparison);
        var result = new List<T>(items.Count);
        int i = 0, j = 0;
        while (i < left.Count && j < right.Count) result.Add(comparison(right[j], left[i]) < 0 ? right[j++] : left[i++]);
        result.AddRange(left.Skip(i));
        result.AddRange(right.Skip(j));
        return result;
    }

    static int Compare(Value a, Value b, bool caseSensitive)
    {
        if (a is NullValue && b is NullValue) return 0;
        if (a is NullValue || b is NullValue) throw new TemplateRuntimeError($"Cannot compare {a.TypeName} with {b.TypeName}");
        if (a is UndefinedValue && b is UndefinedValue) return 0;
        if (a is UndefinedValue || b is UndefinedValue) throw new TemplateRuntimeError($"Cannot compare {a.TypeName} with {b.TypeName}");
        if (IsNumericLike(a) && IsNumericLike(b))
        {
            double x = NumericValue(a), y = NumericValue(b);
            return x < y ? -1 : x > y ? 1 : 0;
        }
        if (a.TypeName != b.TypeName) throw new TemplateRuntimeError($"Cannot compare different types: {a.TypeName} and {b.TypeName}");
        if (a is StrValue sa && b is StrValue sb)
        {
            string x = caseSensitive ? sa.V : Js.ToLower(sa.V), y = caseSensitive ? sb.V : Js.ToLower(sb.V);
            return Math.Sign(string.CompareOrdinal(x, y));
        }
        throw new TemplateRuntimeError($"Cannot compare type: {a.TypeName}");
    }

    Value? StringBuiltin(StrValue str, string name)
    {
        var s = str.V;
        return name switch
        {
            "upper" => new FuncValue((_, _) => new StrValue(Js.ToUpper(s))),
            "lower" => new FuncValue((_, _) => new StrValue(Js.ToLower(s))),
            "strip" => new FuncValue((_, _) => new StrValue(Js.Trim(s))),
            "title" => new FuncValue((_, _) => new StrValue(TitleCase(s))),
            "capitalize" => new FuncValue((_, _) => new StrValue(Capitalize(s))),
            "length" => new IntValue(s.Length),
            "rstrip" => new FuncValue((_, _) => new StrValue(Js.TrimEnd(s))),
            "lstrip" => new FuncValue((_, _) => new StrValue(Js.TrimStart(s))),
            "startswith" => new FuncValue((args, _) => AffixTest(s, args, "startswith", (x, p) => x.StartsWith(p, StringComparison.Ordinal))),
            "endswith" => new FuncValue((args, _) => AffixTest(s, args, "endswith", (x, p) => x.EndsWith(p, StringComparison.Ordinal))),
            "split" => new FuncValue((args, _) => Split(s, args)),
            "replace" => new FuncValue((args, _) => Replace(s, args)),
            _ => null,
        };
    }

    static string TitleCase(string s)
    {
        static bool W(char c) => char.IsAsciiLetterOrDigit(c) || c == '_';
        var chars = s.ToCharArray();
        for (int i = 0; i < chars.Length; i++)
            if (W(chars[i]) && (i == 0 || !W(chars[i - 1]))) chars[i] = char.ToUpperInvariant(chars[i]);
        return new string(chars);
    }

    static string Capitalize(string s) => s.Length == 0 ? s : Js.ToUpper(s[..1]) + s[1..];

    static BoolValue AffixTest(string s, List<Value> args, string name, Func<string, string, bool> test)
    {
        if (args.Count == 0) throw new TemplateRuntimeError($"{name}() requires at least one argument");
        switch (args[0])
        {
            case StrValue p: return BoolValue.Of(test(s, p.V));
            case ArrayValue a:
                foreach (var item in a.Items)
                {
                    if (item is not StrValue p) throw new TemplateRuntimeError($"{name}() tuple elements must be strings");
                    if (test(s, p.V)) return BoolValue.True;
                }
                return BoolValue.False;
            default: throw new TemplateRuntimeError($"{name}() argument must be a string or tuple of strings");
        }
    }

    static ArrayValue Split(string s, List<Value> args)
    {
        var sep = args.ElementAtOrDefault(0) ?? NullValue.Instance;
        if (sep is not (StrValue or NullValue)) throw new TemplateRuntimeError("sep argument must be a string or null");
        var maxsplitValue = args.ElementAtOrDefault(1) ?? new IntValue(-1);
        if (maxsplitValue is not IntValue maxsplitInt) throw new TemplateRuntimeError("maxsplit argument must be a number");
        double maxsplit = maxsplitInt.V;
        var result = new List<string>();
        if (sep is NullValue)
        {
            var text = Js.TrimStart(s);
            int i = 0;
            while (i < text.Length)
            {
                while (i < text.Length && Js.IsWhiteSpace(text[i])) i++;
                if (i >= text.Length) break;
                int start = i;
                while (i < text.Length && !Js.IsWhiteSpace(text[i])) i++;
                if (maxsplit != -1 && result.Count >= maxsplit) { result.Add(text[start..]); break; }
                result.Add(text[start..i]);
            }
        }
        else
        {
            var separator = ((StrValue)sep).V;
            if (separator.Length == 0) throw new TemplateRuntimeError("empty separator");
            result = s.Split(separator).ToList();
            if (maxsplit != -1 && result.Count > maxsplit)
            {
                int from = maxsplit < 0 ? (int)Math.Max(result.Count + maxsplit, 0) : (int)maxsplit;
                var rest = string.Join(separator, result.Skip(from));
                result = result.Take(from).ToList();
                result.Add(rest);
            }
        }
        return new ArrayValue(result.Select(p => (Value)new StrValue(p)).ToList());
    }

    static StrValue Replace(string s, List<Value> args)
    {
        if (args.Count < 2) throw new TemplateRuntimeError("replace() requires at least two arguments");
        if (args[0] is not StrValue oldValue || args[1] is not StrValue newValue)
            throw new TemplateRuntimeError("replace() arguments must be strings");
        Value count = args.Count > 2 ? args[2] is KwargsValue kw ? kw.Map.GetValueOrDefault("count") ?? NullValue.Instance : args[2] : NullValue.Instance;
        if (count is not (IntValue or NullValue)) throw new TemplateRuntimeError("replace() count argument must be a number or null");
        double? c = count is IntValue ci ? ci.V : null;
        if (c == 0) return new StrValue(s);
        double remaining = c is null || c < 0 ? double.PositiveInfinity : c.Value;
        var sb = new StringBuilder();
        if (oldValue.V.Length == 0)
        {
            // An empty pattern matches before every code point and at the end.
            foreach (var cp in Js.CodePoints(s))
            {
                if (remaining-- > 0) sb.Append(newValue.V);
                sb.Append(cp);
            }
            if (remaining > 0) sb.Append(newValue.V);
            return new StrValue(sb.ToString());
        }
        int pos = 0;
        while (remaining > 0)
        {
            int found = s.IndexOf(oldValue.V, pos, StringComparison.Ordinal);
            if (found < 0) break;
            sb.Append(s, pos, found - pos).Append(newValue.V);
            pos = found + oldValue.V.Length;
            remaining--;
        }
        sb.Append(s, pos, s.Length - pos);
        return new StrValue(sb.ToString());
    }

    // ---- filters (same dispatch order and messages as the renderer) --------------------------------------------

    Value ApplyFilter(Value operand, Node filterNode, Env env)
    {
        if (filterNode is Identifier filterId)
        {
            var filter = filterId.Name;
            if (filter == "safe") return operand;
            if (filter == "tojson") return new StrValue(Json.Serialize(operand, new JsonOptions(), 0));
            switch (operand)
            {
                case ArrayValue arr:
                    switch (filter)
                    {
                        case "list": return operand;
                        case "first": return arr.Items.Count > 0 ? arr.Items[0] : throw new TemplateRuntimeError("Cannot read properties of undefined (reading 'type')");
                        case "last": return arr.Items.Count > 0 ? arr.Items[^1] : throw new TemplateRuntimeError("Cannot read properties of undefined (reading 'type')");
                        case "length": return new IntValue(arr.Items.Count);
                        case "reverse": return new ArrayValue(Enumerable.Reverse(arr.Items).ToList());
                        case "sort": return new ArrayValue(StableSort(arr.Items, (a, b) => Compare(a, b, false)));
                        case "join": return new StrValue(string.Concat(arr.Items.Select(Js.JoinString)));
                        case "string": return new StrValue(Json.Serialize(operand, new JsonOptions(), 0, undefinedAsNull: false));
                        case "unique":
                        {
                            var output = new List<Value>();
                            foreach (var item in arr.Items)
                                if (!output.Any(o => SameValueZero(o, item))) output.Add(item);
                            return new ArrayValue(output);
                        }
                        default: throw new TemplateRuntimeError($"Unknown ArrayValue filter: {filter}");
                    }
                case StrValue str:
                    switch (filter)
                    {
                        case "length": return new IntValue(str.V.Length);
                        case "upper": return new StrValue(Js.ToUpper(str.V));
                        case "lower": return new StrValue(Js.ToLower(str.V));
                        case "title": return new StrValue(TitleCase(str.V));
                        case "capitalize": return new StrValue(Capitalize(str.V));
                        case "trim": return new StrValue(Js.Trim(str.V));
                        case "indent": return new StrValue(Indent(str.V, "    ", first: false, blank: false));
                        case "join":
                        case "string": return operand;
                        case "int": { var v = Js.ParseInt(str.V); return new IntValue(double.IsNaN(v) ? 0 : v); }
                        case "float": { var v = Js.ParseFloat(str.V); return new FloatValue(double.IsNaN(v) ? 0 : v); }
                        default: throw new TemplateRuntimeError($"Unknown StringValue filter: {filter}");
                    }
                case IntValue or FloatValue:
                {
                    double v = NumericValue(operand);
                    switch (filter)
                    {
                        case "abs": return operand is IntValue ? new IntValue(Math.Abs(v)) : new FloatValue(Math.Abs(v));
                        case "int": return new IntValue(Math.Floor(v));
                        case "float": return new FloatValue(v);
                        case "string": return new StrValue(operand.Render());
                        default: throw new TemplateRuntimeError($"Unknown NumericValue filter: {filter}");
                    }
                }
                case ObjValue obj:
                    switch (filter)
                    {
                        case "items": return obj.Items();
                        case "length": return new IntValue(obj.Map.Count);
                        default:
                            var builtin = ObjectBuiltin(obj, filter) ?? throw new TemplateRuntimeError($"Unknown ObjectValue filter: {filter}");
                            return builtin is FuncValue fn ? fn.Call([], env) : builtin;
                    }
                case BoolValue b:
                    switch (filter)
                    {
                        case "bool": return b;
                        case "int": return new IntValue(b.V ? 1 : 0);
                        case "float": return new FloatValue(b.V ? 1 : 0);
                        case "string": return new StrValue(b.V ? "true" : "false");
                        default: throw new TemplateRuntimeError($"Unknown BooleanValue filter: {filter}");
                    }
            }
            throw new TemplateRuntimeError($"Cannot apply filter \"{filter}\" to type: {operand.TypeName}");
        }

        if (filterNode is not CallExpr call) throw new TemplateRuntimeError($"Unknown filter: {AstTypeName(filterNode)}");
        if (call.Callee is not Identifier callee) throw new TemplateRuntimeError($"Unknown filter: {AstTypeName(call.Callee)}");
        var name = callee.Name;

        if (name == "tojson")
        {
            var (_, kwargs) = EvaluateArguments(call.Args, env);
            var indent = kwargs.GetValueOrDefault("indent") ?? NullValue.Instance;
            if (indent is not (IntValue or NullValue)) throw new TemplateRuntimeError("If set, indent must be a number");
            var ensureAscii = kwargs.GetValueOrDefault("ensure_ascii") ?? BoolValue.False;
            if (ensureAscii is not BoolValue ea) throw new TemplateRuntimeError("If set, ensure_ascii must be a boolean");
            var sortKeys = kwargs.GetValueOrDefault("sort_keys") ?? BoolValue.False;
            if (sortKeys is not BoolValue sk) throw new TemplateRuntimeError("If set, sort_keys must be a boolean");
            var separatorsArg = kwargs.GetValueOrDefault("separators") ?? NullValue.Instance;
            (string, string)? separators = null;
            if (separatorsArg is ArrayValue sepArr)
            {
                if (sepArr.Items.Count != 2) throw new TemplateRuntimeError("separators must be a tuple of two strings");
                if (sepArr.Items[0] is not StrValue itemSep || sepArr.Items[1] is not StrValue keySep)
                    throw new TemplateRuntimeError("separators must be a tuple of two strings");
                separators = (itemSep.V, keySep.V);
            }
            else if (separatorsArg is not NullValue) throw new TemplateRuntimeError("If set, separators must be a tuple of two strings");
            return new StrValue(Json.Serialize(operand, new JsonOptions(indent is IntValue iv ? iv.V : null, ea.V, separators, sk.V), 0));
        }
        if (name == "join")
        {
            List<string> parts = operand switch
            {
                StrValue s => Js.CodePoints(s.V),
                ArrayValue a => a.Items.Select(Js.JoinString).ToList(),
                _ => throw new TemplateRuntimeError($"Cannot apply filter \"{name}\" to type: {operand.TypeName}"),
            };
            var (args, kwargs) = EvaluateArguments(call.Args, env);
            var separator = args.ElementAtOrDefault(0) ?? kwargs.GetValueOrDefault("separator") ?? new StrValue("");
            if (separator is not StrValue sep) throw new TemplateRuntimeError("separator must be a string");
            return new StrValue(string.Join(sep.V, parts));
        }
        if (name is "int" or "float")
        {
            var (args, kwargs) = EvaluateArguments(call.Args, env);
            var defaultValue = args.ElementAtOrDefault(0) ?? kwargs.GetValueOrDefault("default") ?? (name == "int" ? new IntValue(0) : new FloatValue(0));
            switch (operand)
            {
                case StrValue s:
                {
                    var v = name == "int" ? Js.ParseInt(s.V) : Js.ParseFloat(s.V);
                    return double.IsNaN(v) ? defaultValue : name == "int" ? new IntValue(v) : new FloatValue(v);
                }
                case IntValue or FloatValue: return operand;
                case BoolValue b: return name == "int" ? new IntValue(b.V ? 1 : 0) : new FloatValue(b.V ? 1 : 0);
                default: throw new TemplateRuntimeError($"Cannot apply filter \"{name}\" to type: {operand.TypeName}");
            }
        }
        if (name == "default")
        {
            var (args, kwargs) = EvaluateArguments(call.Args, env);
            var defaultValue = args.ElementAtOrDefault(0) ?? new StrValue("");
            var booleanValue = args.ElementAtOrDefault(1) ?? kwargs.GetValueOrDefault("boolean") ?? BoolValue.False;
            if (booleanValue is not BoolValue bv) throw new TemplateRuntimeError("`default` filter flag must be a boolean");
            return operand is UndefinedValue || (bv.V && !operand.Truthy) ? defaultValue : operand;
        }

        switch (operand)
        {
            case ArrayValue arr:
                switch (name)
                {
                    case "sort": return SortFilter(arr, call, env);
                    case "selectattr":
                    case "rejectattr":
                    {
                        bool select = name == "selectattr";
                        if (arr.Items.Any(i => i is not (ObjValue or NamespaceValue)))
                            throw new TemplateRuntimeError($"`{name}` can only be applied to array of objects");
                        if (call.Args.Any(a => a is not StrLiteral)) throw new TemplateRuntimeError($"arguments of `{name}` must be strings");
                        var values = call.Args.Select(a => (StrValue)Evaluate(a, env)).ToList();
                        var attr = values.ElementAtOrDefault(0);
                        var testName = values.ElementAtOrDefault(1);
                        var value = values.ElementAtOrDefault(2);
                        Func<Value, bool> test;
                        if (testName is not null)
                        {
                            if (!TestNames.Contains(testName.V))
                                throw new TemplateRuntimeError($"Unknown test: {testName.V}");
                            test = a => Test(testName.V, a, value)!.Value;
                        }
                        else test = a => a.Truthy;
                        var filtered = arr.Items.Where(item =>
                        {
                            var map = item is ObjValue o ? o.Map : ((NamespaceValue)item).Map;
                            var result = attr is not null && map.TryGetValue(attr.V, out var a) && test(a);
                            return select ? result : !result;
                        }).ToList();
                        return new ArrayValue(filtered);
                    }
                    case "map":
                    {
                        var (_, kwargs) = EvaluateArguments(call.Args, env);
                        if (!kwargs.TryGetValue("attribute", out var attrValue))
                            throw new TemplateRuntimeError("`map` expressions without `attribute` set are not currently supported.");
                        if (attrValue is not StrValue attr) throw new TemplateRuntimeError("attribute must be a string");
                        var defaultValue = kwargs.GetValueOrDefault("default");
                        return new ArrayValue(arr.Items.Select(item =>
                        {
                            if (item is not (ObjValue or NamespaceValue)) throw new TemplateRuntimeError("items in map must be an object");
                            var v = AttributeValue(item, attr.V);
                            return v is UndefinedValue ? defaultValue ?? UndefinedValue.Instance : v;
                        }).ToList());
                    }
                }
                throw new TemplateRuntimeError($"Unknown ArrayValue filter: {name}");
            case StrValue str:
                switch (name)
                {
                    case "indent":
                    {
                        var (args, kwargs) = EvaluateArguments(call.Args, env);
                        var width = args.ElementAtOrDefault(0) ?? kwargs.GetValueOrDefault("width") ?? new IntValue(4);
                        if (width is not IntValue w) throw new TemplateRuntimeError("width must be a number");
                        var first = args.ElementAtOrDefault(1) ?? kwargs.GetValueOrDefault("first") ?? BoolValue.False;
                        var blank = args.ElementAtOrDefault(2) ?? kwargs.GetValueOrDefault("blank") ?? BoolValue.False;
                        return new StrValue(Indent(str.V, new string(' ', Math.Max(0, (int)w.V)), Js.RawTruthy(first), Js.RawTruthy(blank)));
                    }
                    case "replace":
                    {
                        var (args, kwargs) = EvaluateArguments(call.Args, env);
                        return Replace(str.V, [.. args, new KwargsValue(kwargs)]);
                    }
                }
                throw new TemplateRuntimeError($"Unknown StringValue filter: {name}");
            case ObjValue obj:
                if (ObjectBuiltin(obj, name) is FuncValue fn)
                {
                    var (args, kwargs) = EvaluateArguments(call.Args, env);
                    if (kwargs.Count > 0) args.Add(new KwargsValue(kwargs));
                    return fn.Call(args, env);
                }
                throw new TemplateRuntimeError($"Unknown ObjectValue filter: {name}");
            default:
                throw new TemplateRuntimeError($"Cannot apply filter \"{name}\" to type: {operand.TypeName}");
        }
    }

    static bool SameValueZero(Value a, Value b) =>
        Js.StrictEquals(a, b) || (a is IntValue or FloatValue && b is IntValue or FloatValue && double.IsNaN(NumericValue(a)) && double.IsNaN(NumericValue(b)));

    static string Indent(string s, string indent, bool first, bool blank) =>
        string.Join("\n", s.Split('\n').Select((line, i) => (!first && i == 0) || (!blank && line.Length == 0) ? line : indent + line));

    Value SortFilter(ArrayValue arr, CallExpr call, Env env)
    {
        var (args, kwargs) = EvaluateArguments(call.Args, env);
        var reverse = args.ElementAtOrDefault(0) ?? kwargs.GetValueOrDefault("reverse") ?? BoolValue.False;
        if (reverse is not BoolValue r) throw new TemplateRuntimeError("reverse must be a boolean");
        var caseSensitive = args.ElementAtOrDefault(1) ?? kwargs.GetValueOrDefault("case_sensitive") ?? BoolValue.False;
        if (caseSensitive is not BoolValue cs) throw new TemplateRuntimeError("case_sensitive must be a boolean");
        var attribute = args.ElementAtOrDefault(2) ?? kwargs.GetValueOrDefault("attribute") ?? NullValue.Instance;
        if (attribute is not (StrValue or IntValue or NullValue)) throw new TemplateRuntimeError("attribute must be a string, integer, or null");
        Value Key(Value item) => attribute switch
        {
            NullValue => item,
            IntValue i => AttributeValue(item, Js.NumberToString(i.V)),
            _ => AttributeValue(item, ((StrValue)attribute).V),
        };
        return new ArrayValue(StableSort(arr.Items, (a, b) =>
        {
            var c = Compare(Key(a), Key(b), cs.V);
            return r.V ? -c : c;
        }));
    }

    /// <summary>A dotted attribute path ("details.priority", "items.0") through mappings and lists.</summary>
    static Value AttributeValue(Value item, string path)
    {
        var value = item;
        foreach (var part in path.Split('.'))
        {
            if (value is ObjValue or NamespaceValue)
            {
                var map = value is ObjValue o ? o.Map : ((NamespaceValue)value).Map;
                value = map.TryGetValue(part, out var v) ? v : UndefinedValue.Instance;
            }
            else if (value is ArrayValue a)
            {
                var parsed = Js.ParseInt(part);
                if (!double.IsNaN(parsed) && parsed >= 0 && parsed < a.Items.Count) value = a.Items[(int)parsed];
                else return UndefinedValue.Instance;
            }
            else return UndefinedValue.Instance;
        }
        return value;
    }
}
